"""Reading params.yaml: YAML (a key given twice is an error), then the schema of
:mod:`fastflux_core.params`, each failure one :class:`~fastflux_core.errors.ParamsError` line naming
every offending key — a stage stops before it writes anything.

>>> s = {"file": "prompts.txt"}
>>> required = {"prompts": dict(calibration=s, training=s, evaluation=s, importance=s),
...             "importance": {"blocks": [0, 1, 2]}}
>>> p = parse_params({"ratio": 0.1, **required})
>>> p.ratio, p.model.source, p.importance.alpha
(0.1, 'embedded', 0.5)
>>> try:
...     parse_params({"ratoi": 0.1, **required})
... except ParamsError as err:
...     print(err)
invalid parameters in params: ratoi: unknown key
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from fastflux_core.errors import ParamsError
from fastflux_core.params import Params


def _describe(err: ValidationError, source: str) -> str:
    """One line: every offending key and why (pydantic's own messages, 'unknown key' for typos)."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else " ".join(e["msg"].split())
        problems.append(f"{key}: {msg.removeprefix('Value error, ')}")
    return f"invalid parameters in {source}: " + "; ".join(problems)


def parse_params(data: object, source: str = "params") -> Params:
    """Validate a mapping (as read from YAML) into :class:`Params`, raising :class:`ParamsError`."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source} must be a mapping at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last
    silently: ``ratio: 0.1`` far below ``ratio: 0.2`` would win unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_params(path: str | Path = "params.yaml") -> Params:
    """Read ``path`` and validate it against the schema (:func:`parse_params`); a YAML key given twice,
    a file that is not UTF-8 YAML or a missing file is one :class:`ParamsError` line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    return parse_params(data, str(path))
