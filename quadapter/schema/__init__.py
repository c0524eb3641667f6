"""Config validation before any heavy work: ``validate(cfg)`` raises one ``ConfigError``.

Three layers, all on the composed config and none loading a model, tokenizer or data:
1. types: every group is assigned into an OmegaConf structured config (``groups``), so a wrong
   type (``bits.weight=3.5``) or an unknown key (``+eval.strid=5``) is OmegaConf's finding;
2. values: each field's allowed values (choices, ranges) from its ``knob`` metadata;
3. relations: combinations that do not make a run (``relations``), e.g. method=ptq with
   adapter=quadapter, eval.stride > eval.context, a split a dataset does not have.
Every problem found is one line of the single message, naming the key, the value and what is
allowed. Imports no torch: the names it allows are spelled out in ``groups``.
"""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from quadapter.schema.fields import Problems, typed
from quadapter.schema.groups import Config
from quadapter.schema.relations import View, run_relations

__all__ = ["validate"]


def _plain(cfg: DictConfig, problems: Problems) -> dict[str, Any]:
    """The config as plain values with interpolations resolved; one that fails is a problem."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        pass
    out: dict[str, Any] = {}
    for key in cfg:
        try:
            value = cfg[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) \
                else value
        except MissingMandatoryValue:
            out[key] = "???"
        except OmegaConfBaseException as e:
            problems.add(str(key), f"{key}: an interpolation cannot be resolved: "
                                   f"{str(e).splitlines()[0]}")
    return out


def _task_and_dataset_disagree(raw: Mapping[str, Any]) -> str | None:
    """A GLUE dataset (it names a ``task``) with task=lm, or a corpus with task=glue."""
    task = (raw.get("task") or {}).get("name") if isinstance(raw.get("task"), Mapping) else None
    dataset = raw.get("dataset")
    if not isinstance(dataset, Mapping) or task not in ("lm", "glue"):
        return None
    name = dataset.get("name")
    if task == "lm" and "task" in dataset:
        return (f"dataset={name} is a GLUE task's dataset: run it with task=glue (task=lm needs a "
                "text corpus, e.g. dataset=wikitext2)")
    if task == "glue" and "task" not in dataset:
        return (f"dataset={name} is a language-modelling corpus: task=glue needs a GLUE dataset "
                "(dataset=glue_mrpc, glue_rte, glue_sst2, glue_cola, glue_stsb)")
    return None


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` listing every type, value and combination problem of ``cfg``."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    if "hydra" in cfg:  # composed with return_hydra_config: Hydra's own node is not ours
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    problems = Problems()
    raw = _plain(cfg, problems)
    mismatch = _task_and_dataset_disagree(raw)
    if mismatch:  # every key of the dataset would be wrong for the task: one line says why instead
        problems.add("dataset", mismatch)
        problems.raise_if_any()
    data = typed(Config, raw, "", problems) or {}
    run_relations(View(data, problems), problems)
    problems.raise_if_any()
