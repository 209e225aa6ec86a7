"""Writers of a case's outputs beyond the NRRD images: DICOM for PACS, HTML/CSV reports."""
