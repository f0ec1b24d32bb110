"""The source role: HL7 intake, the publication worker (report → C-FIND → KOS → DMP) and its API."""
