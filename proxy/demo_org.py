"""The synthetic organisation of the demo: HSA-ids of the care providers, their source systems and care
units (the format of real HSA-ids, invented values).

Shared by the simulators (whose records name these units) and the demo issuer (whose tokens carry
them), so neither has to import the other: the product does not import the simulators.
"""

from __future__ import annotations

# HSA-ids of the synthetic organisation (format of real HSA-ids, invented values).
REGION_PROVIDER = "SE2321000016-15CQ"  # the region (vårdgivare) running Cosmic
COSMIC_SYSTEM = "SE2321000016-COSM"  # Cosmic's source system HSA-id, as NPÖ records it
OTHER_REGION_PROVIDER = "SE2321000081-1MVR"  # another region whose data only NPÖ has
OTHER_REGION_SYSTEM = "SE2321000081-MEL1"
MUNICIPALITY_PROVIDER = "SE2120001520-KOMM"  # the municipality (omsorgsgivare) running Viva
VIVA_SYSTEM = "SE2120001520-VIVA"

UNITS = {
    "akuten": ("SE2321000016-AKM1", "Akutmottagningen Centralsjukhuset"),
    "vc-norr": ("SE2321000016-VCN1", "Vårdcentralen Norrmalm"),
    "med": ("SE2321000016-MED3", "Medicinkliniken avd 3"),
    # the region's ambulance service (it owns MobiMed's threat register) and two of its stations
    "ambulans": ("SE2321000016-AMB1", "Ambulanssjukvården"),
    "ambulans-city": ("SE2321000016-AMB2", "Ambulansstation City"),
    "ambulans-syd": ("SE2321000016-AMB3", "Ambulansstation Syd"),
    "hemsjukvard": ("SE2120001520-HSV1", "Kommunal hemsjukvård Norr"),
    "annan-region": ("SE2321000081-KAR2", "Kardiologen, Universitetssjukhuset Öst"),
}
