"""IHE XDS.b for the DMP: ebRIM metadata, SOAP 1.2 with MTOM/XOP, VIHF assertion, ITI-41/18/43 client."""
