"""Synthetic CT phantoms: head (hemorrhage, stroke) and cervical spine (fractures) as DICOM."""
