"""Datasets: CheXpert CSVs and DICOM/JPEG/PNG images cached to Parquet, pseudonymous patient ids,
prompt text from labels, and the prompt sets that generation, detection and localization share."""
