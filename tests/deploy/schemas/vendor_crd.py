"""Vendor a CustomResourceDefinition's schema the way this folder's README describes.

    python tests/deploy/schemas/vendor_crd.py CRD.yaml VERSION OUT.json

Takes ``spec.versions[name=VERSION].schema.openAPIV3Schema`` and makes it strict: documentation
and server-side merge hints removed, ``x-kubernetes-int-or-string`` as an ``anyOf`` without a
``type``, ``additionalProperties: false`` on every object that lists ``properties`` (unless it
preserves unknown fields), ``metadata`` any object, ``apiVersion``/``kind``/``metadata``/``spec``
required. CEL rules (``x-kubernetes-validations``) stay but are not evaluated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

DROPPED = {
    "description",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k not in DROPPED}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def vendor(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted(
        {*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"}
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main(argv: list[str]) -> int:
    source, version, target = argv
    crd = yaml.safe_load(Path(source).read_text())
    Path(target).write_text(json.dumps(vendor(crd, version), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
