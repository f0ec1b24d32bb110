"""The source role: HL7 intake, the publication outbox and worker (report → C-FIND → KOS → DMP) and its API.

wiring.setup() puts it on a box's app (routes, and resources that open and close with the app).
"""
