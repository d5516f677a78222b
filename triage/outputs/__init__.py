"""Flags back to the site: DICOM SR + KOS to a PACS, DICOM UPS workitems, HL7 ORU over MLLP.

Every channel consumes the same :class:`~triage.outputs.report.StudyReport`; builders are
pure functions, transports are small classes with explicit timeouts.
"""
