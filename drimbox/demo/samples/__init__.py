"""Synthetic, ANS-shaped test material (reports, HL7 messages, DICOM studies) for the demo, tests and perf."""
