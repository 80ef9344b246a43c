"""Patient pseudonymisation, and what must not reach the outputs beside it: identifier columns,
and subgroup columns that would list every image or patient."""

import hashlib
import os

# Used when neither the config nor the environment sets a salt. It is public (it is in this file),
# so anyone can recompute the hash of a guessable id such as a medical record number: validation
# warns when it is used.
DEFAULT_SALT = "medclassify-default-salt"
SALT_ENVIRONMENT_VARIABLE = "MEDCLASSIFY_SALT"
PUBLIC_SALT_WARNING = (f"patient ids were hashed with the public default salt: anyone can recompute the hash of a "
                       f"guessable id (a medical record number, say); set {SALT_ENVIRONMENT_VARIABLE} (or `salt` in "
                       "the config) to a secret of this project")

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


# Manifest column names (lower case, letters and digits only) of identifying values in PACS and
# registry exports: copied into the validated manifest, they would sit beside the salted hash and
# undo it. Not a bare "name", which as often names a site, scanner or study.
IDENTIFIER_COLUMNS = frozenset({
    "patientid", "patientsid", "pid", "patientname", "patientsname", "firstname", "lastname", "surname",
    "givenname", "familyname", "fullname", "mrn", "medicalrecordnumber", "birthdate", "patientbirthdate",
    "patientsbirthdate", "dob", "dateofbirth", "accession", "accessionnumber", "ssn", "socialsecuritynumber",
    "nhsnumber", "address", "patientaddress", "phone", "telephone", "email", "otherpatientids",
    "issuerofpatientid",
})


# Columns of the validated manifest that name one image or one patient each: metrics per value of
# one would list every image path (paths often hold patients' names) or patient in metrics.json and
# the report, which say no image path.
PER_SAMPLE_COLUMNS = ("sample_id", "path", "patient", "content_hash")


def names_each_sample(table, column):
    """How ``column`` of the validated manifest ``table`` names each image or each patient, in
    words, or None (also where the table lacks the column or the sample_id, path and patient ones).

    Metrics per value list every value in metrics.json and the report: a column that repeats the
    image path or the sample id under another name, holds a different value in every row, or
    values most of which belong to one patient each (a subject or exam code beside the salted
    hash, an exact age) would list every image or patient.
    """
    if not {column, "sample_id", "path", "patient"} <= set(table.columns):
        return None
    values, sample_ids, paths, patients = ([str(v).strip() for v in table[name]]
                                           for name in (column, "sample_id", "path", "patient"))
    if len(values) < 2:
        return None
    if values in (sample_ids, paths):
        return "repeats each row's image path"
    if len(set(values)) == len(values):
        return "holds a different value in every row"
    patients_of = {}
    for value, patient in zip(values, patients):
        patients_of.setdefault(value, set()).add(patient)
    own = sum(len(owners) == 1 for owners in patients_of.values())
    if len(set(patients)) > 1 and own > len(patients_of) / 2:
        return "gives most of its values to a single patient each (group them, as age groups)"
    return None


def is_identifier_column(name):
    """Whether a manifest column's name says it holds identifying values (``IDENTIFIER_COLUMNS``)."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum()) in IDENTIFIER_COLUMNS


def hash_patient(patient_id, salt):
    """Return the salted pseudonym of a patient id: ``"p_"`` and 16 hex characters."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode("utf-8")).hexdigest()
    return "p_" + digest[:16]


def resolve_salt(configured, environ=None):
    """The salt to hash patient ids with: the config's ``salt``, else ``$MEDCLASSIFY_SALT``, else the public default.

    The environment keeps a secret salt out of config files, whose text ``snakemake --report``
    copies into the report.
    """
    if configured:
        return configured
    environ = os.environ if environ is None else environ
    return environ.get(SALT_ENVIRONMENT_VARIABLE) or DEFAULT_SALT


def salt_fingerprint(salt):
    """A one-way digest of ``salt``: tells salts apart (a change reruns validation) without showing one.

    Snakemake keeps a rule's params in plain text in ``.snakemake/metadata`` and prints changed
    ones in its log, so the salt itself must not be a param.
    """
    return hashlib.sha256(f"medclassify salt\0{salt}".encode("utf-8")).hexdigest()[:16]
