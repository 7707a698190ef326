"""KNIFE batch layout: the teacher reads `input + FTR`, the student reads `input`, at identical positions.

Putting the task input first in the teacher sequence (and right-padding both) means student token i and
teacher token i are the same token, so encoder states can be aligned position by position with one mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.data.collate import pad_batch
from trainer.objectives.task import IGNORE_INDEX


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


def _length_mask(rows: list[list[int]], width: int) -> Tensor:
    """1 on each row's real positions, 0 on its right padding."""
    lengths = torch.tensor([len(row) for row in rows])
    return (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()


def collate_knife(features: list[dict], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad a list of build_knife_features outputs into the aligned teacher/student batch."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    padded = pad_batch(features, pad_token_id)
    student_attention = _length_mask([f["student_input_ids"] for f in features], padded["student_input_ids"].shape[1])
    teacher_attention = _length_mask([f["teacher_input_ids"] for f in features], padded["teacher_input_ids"].shape[1])
    return {
        "student_input_ids": padded["student_input_ids"],
        "student_attention_mask": student_attention,
        "teacher_input_ids": padded["teacher_input_ids"],
        "teacher_attention_mask": teacher_attention,
        "teacher_cross_attention_mask": padded["teacher_input_mask"],
        "input_alignment_mask": student_attention.clone(),
        "labels": padded["labels"],
        "decoder_mask": (padded["labels"] != IGNORE_INDEX).long(),
    }
