"""Validation of STAC Items against the MLM v1.5.2 JSON schema and the schemas it references, offline: the vendored
copies in fixtures/stac_schemas (see its README), resolved through a local registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a dev dependency) is not installed")
from referencing import Registry, Resource  # noqa: E402  (jsonschema brings it)
from referencing.jsonschema import DRAFT7  # noqa: E402

SCHEMAS = Path(__file__).parent / "fixtures" / "stac_schemas"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"

#: The raster extension's data types, as its schema lists them (MLM's ``data_type`` refers to them).
RASTER_DATA_TYPES = json.loads((SCHEMAS / "raster-v1.1.0.json").read_text())["definitions"]["bands"]["items"][
    "properties"]["data_type"]["enum"]


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def _registry() -> Registry:
    resources = {MLM: _schema("mlm-v1.5.2.json"), CLASSIFICATION: _schema("classification-v1.1.0.json"),
                 PROCESSING: _schema("processing-v1.1.0.json"), RASTER: _schema("raster-v1.1.0.json")}
    return Registry().with_resources((uri, Resource.from_contents(doc, default_specification=DRAFT7))
                                     for uri, doc in resources.items())


def mlm_errors(item: dict) -> list[str]:
    """What the MLM v1.5.2 schema (and the classification schema, which the item also declares) find wrong in
    ``item``; no network is used: a reference outside the registry is an error."""
    registry = _registry()
    errors = []
    for name in ("mlm-v1.5.2.json", "classification-v1.1.0.json"):
        validator = jsonschema.Draft7Validator(_schema(name), registry=registry)
        errors += [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
                   for e in validator.iter_errors(item)]
    return errors
