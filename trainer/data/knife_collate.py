"""KNIFE batch layout: the teacher reads `input + FTR`, the student reads `input`, at identical positions.

Putting the task input first in the teacher sequence (and right-padding both) means student token i and
teacher token i are the same token, so encoder states can be aligned position by position with one mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

LABEL_PAD_ID = -100


def build_knife_features(
    input_ids: list[int], ftr_ids: list[int], label_ids: list[int], max_length: int
) -> dict[str, list[int]]:
    """Teacher = input + FTR within max_length; only the FTR is ever cut, and it keeps its final EOS."""
    room = max_length - len(input_ids)
    if room <= 0:
        ftr = []
    elif len(ftr_ids) > room:
        ftr = ftr_ids[: room - 1] + ftr_ids[-1:]
    else:
        ftr = list(ftr_ids)
    return {
        "student_input_ids": list(input_ids),
        "teacher_input_ids": list(input_ids) + ftr,
        "teacher_input_mask": [1] * len(input_ids) + [0] * len(ftr),
        "labels": list(label_ids),
    }


def _pad(rows: list[list[int]], value: int) -> Tensor:
    width = max((len(row) for row in rows), default=0)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate_knife(features: list[dict], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad a list of build_knife_features outputs into the aligned teacher/student batch."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    student = [f["student_input_ids"] for f in features]
    teacher = [f["teacher_input_ids"] for f in features]
    student_attention = _pad([[1] * len(row) for row in student], 0)
    labels = _pad([f["labels"] for f in features], LABEL_PAD_ID)
    return {
        "student_input_ids": _pad(student, pad_token_id),
        "student_attention_mask": student_attention,
        "teacher_input_ids": _pad(teacher, pad_token_id),
        "teacher_attention_mask": _pad([[1] * len(row) for row in teacher], 0),
        "teacher_cross_attention_mask": _pad([f["teacher_input_mask"] for f in features], 0),
        "input_alignment_mask": student_attention.clone(),
        "labels": labels,
        "decoder_mask": (labels != LABEL_PAD_ID).long(),
    }
