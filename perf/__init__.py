"""drimbox's benchmarks: figures measured side by side with Orthanc and dcmtk in the same run."""
