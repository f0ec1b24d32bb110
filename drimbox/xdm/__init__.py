"""IHE XDM (ITI-32) packages of a published exam: the ZIP the source exports and the consumer imports."""
