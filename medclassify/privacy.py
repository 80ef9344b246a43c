"""Patient pseudonymisation."""

import hashlib

# DICOM attributes that identify a person, an institution or a visit. Readers never copy them
# into metadata, and tests grep results/ for their values.
IDENTIFYING_DICOM_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientAddress",
    "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames", "PatientMotherBirthName",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StudyID", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "DeviceSerialNumber", "StationName",
)


def hash_patient(patient_id, salt):
    """Return the salted pseudonym of a patient id: ``"p_"`` and 16 hex characters."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode("utf-8")).hexdigest()
    return "p_" + digest[:16]
