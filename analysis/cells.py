"""Which row of the paper a grid cell reproduces, read from the cell's chain (no step numbers).

A grid names each cell after its checkpoint chain (``harness/grid/plan.py``): the pretraining pair
and the global step it is taken at, then each later stage's architecture, objective and global end
step, joined by ``-``; a checkpoint inside a later stage adds ``@STEP``::

    cd_flm_64                      CD:FLM pretraining, at step 64
    cd_mlm_15-cd_flm_16            CD:MLM at 15, adapted with FLM up to 16 (LM-A)
    cd_flm_64-nd_mlm_84-nd_mtf_92  CD:FLM at the end, non-causal MLM to 84 (NC-A), then ND MTF

The paper's row follows from the chain's *structure* and from how far into pretraining its last
non-MTF link ends, as a fraction of the pretraining steps (``point``): ``1/4``, ``1/2``, ``1``
(42B, 84B, 168B tokens at the paper's scale), ``1+`` past the end (the 219B adaptations), or the
exact fraction otherwise. The same rule maps ``paper.yaml`` (131,072 steps), ``small.yaml`` and
``tiny.yaml`` (64 steps) onto the same rows. Baselines (``t5_lm``, ``t0``) are their own recipe.
"""

from __future__ import annotations

import dataclasses
import fractions
import re
from typing import Optional

ARCH_TITLES = {"cd": "CD", "nd": "ND", "ed": "ED"}
_LINK = re.compile(r"^(cd|nd|ed)_(flm|plm|mlm|mtf)_(\d+)$")
PAIRS = ("cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm")   # the paper's order


@dataclasses.dataclass(frozen=True)
class CellInfo:
    """A cell's place in the study.

    Attributes:
      cell: the cell's name.
      recipe: its chain without steps (``cd_mlm > cd_flm > cd_mtf``), or the baseline's name.
      point: the fraction of pretraining where its last non-MTF link ends (see module doc), or
        "" for a baseline or an unparsed name.
      pair: the pretraining pair it starts from (``cd_mlm``), or "".
      architecture: the architecture it is evaluated as (its last link's), or "".
      mtf: whether it ends with multitask finetuning.
      kind: ``pretrain`` (a pretraining checkpoint), ``adapt`` (ends in an adaptation), ``mtf``,
        ``baseline`` or ``other``.
      step: the global step of its checkpoint, or None.
    """

    cell: str
    recipe: str
    point: str
    pair: str
    architecture: str
    mtf: bool
    kind: str
    step: Optional[int]

    @property
    def label(self) -> str:
        """A readable name: ``CD:MLM > CD:FLM > CD:MTF``."""
        if self.kind in ("baseline", "other"):
            return self.recipe
        return " > ".join(part.replace("_", ":").upper() for part in self.recipe.split(" > "))


def point_label(step: int, pretrain_steps: int) -> str:
    """``1/4``, ``1/2``, ``1``, ``1+`` (past the end), or the exact fraction (``15/64``)."""
    share = fractions.Fraction(step, pretrain_steps)
    if share > 1:
        return "1+"
    return str(share)


def parse_cell(cell: str, pretrain_steps: Optional[int], baseline: bool = False) -> CellInfo:
    """The recipe and point of ``cell`` (see the module docstring).

    Args:
      cell: a grid cell name.
      pretrain_steps: the grid's pretraining steps (``pretrain.steps``); None leaves ``point``
        empty.
      baseline: the cell is an imported baseline (a grid ``import`` stage: T5-LM, T0).
    """
    name, _, at = cell.partition("@")
    links = []
    for part in name.split("-"):
        match = _LINK.match(part)
        if not match:
            return CellInfo(cell, cell, "", "", "", False, "baseline" if baseline else "other",
                            None)
        links.append((match.group(1), match.group(2), int(match.group(3))))
    if at.isdigit():
        arch, objective, _ = links[-1]
        links[-1] = (arch, objective, int(at))
    recipe = " > ".join(f"{a}_{o}" for a, o, _ in links)
    mtf = links[-1][1] == "mtf"
    body = [link for link in links if link[1] != "mtf"] or links[:1]
    point = "" if not pretrain_steps else point_label(body[-1][2], pretrain_steps)
    kind = "mtf" if mtf else ("pretrain" if len(links) == 1 else "adapt")
    return CellInfo(cell=cell, recipe=recipe, point=point, pair=f"{links[0][0]}_{links[0][1]}",
                    architecture=links[-1][0], mtf=mtf, kind=kind, step=links[-1][2])


def pretrain_steps_from_names(cells: list[str]) -> Optional[int]:
    """A fallback for grids whose pretraining config cannot be read: the largest step a
    pretraining checkpoint is taken at (a grid evaluates or branches from the end of its runs)."""
    steps = []
    for cell in cells:
        match = _LINK.match(cell.split("-")[0].partition("@")[0])
        if match and match.group(2) != "mtf":
            steps.append(int(match.group(3)))
    return max(steps) if steps else None
