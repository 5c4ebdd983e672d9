"""fhir-facade: an HL7 FHIR R4 query-response facade in front of Swedish legacy health records."""

__version__ = "0.1.0"
