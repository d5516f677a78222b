"""Always-on CT triage service: DICOM ingest, study assembly, worklist and web API."""

import logging

__version__ = "0.1.0"

logging.getLogger("triage").addHandler(logging.NullHandler())
