"""`drimbox demo`: the whole DRIM-M mesh on loopback, for a newcomer to try and for the tests to drive.

    main.py         the command: simulator, PACS, source and consumer boxes, ANS reports, the links to open
    mesh.py         each service's configuration (ports, var dir, the operator token)
    options.py      its command-line options and port plan
    launcher.py     the stand-in for the doctor's software (a page that posts the launch form to the consumer)
    child.py        `drimbox demo` as a child process, followed until ready, then stopped (tests, screenshots)
    screenshots.py  the README's screenshots, taken in headless Chromium against a demo
    samples/        ANS-shaped studies, reports and messages, an Orthanc and drimbox processes: the demo's
                    material, which the tests, perf/ and conformance/ build their fixtures from

`drimbox serve` imports none of this (tests/test_imports.py checks it).
"""
