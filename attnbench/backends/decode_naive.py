"""``decode_naive``: the decode reference run in the input dtype (same-dtype torch).

Sequence by sequence: the cache gathered to the sequence's keys, the scores materialised, a
softmax, P @ V (:func:`attnbench.problems.decode.reference.decode_ref` with ``upcast=False``).
It is also the baseline of the accuracy rule, so its error ratio is 1 by construction; it is
listed so its speed appears next to the kernels.
"""

from __future__ import annotations

from ..problems.decode import decode_ref
from .base import Backend, Capabilities, Prepared, register


@register
class DecodeNaive(Backend):
    name = "decode_naive"
    description = "decode reference in the input dtype (per sequence: gather, S, softmax, P @ V)"
    caps = Capabilities(
        problem="decode",
        devices={"cpu", "cuda"},
        backward=False,
        lse=True,
        features={"paged", "q_len_gt_1"},
    )

    def prepare(self, inp, case):
        return Prepared((inp.q,), {"inputs": inp})

    def forward(self, p, case):
        return decode_ref(p.args["inputs"], case.scale, upcast=False)
