import pytest
import torch

from trainer.methods.knife.collate import build_knife_features, collate_knife

EOS = 1
PAD = 0


def test_build_features_concatenates_input_then_ftr() -> None:
    features = build_knife_features([5, 6, EOS], [7, 8, EOS], [9, EOS], max_length=16)
    assert features == {
        "student_input_ids": [5, 6, EOS],
        "teacher_input_ids": [5, 6, EOS, 7, 8, EOS],
        "teacher_input_mask": [1, 1, 1, 0, 0, 0],
        "labels": [9, EOS],
    }


def test_build_features_truncates_only_the_ftr_and_keeps_its_eos() -> None:
    features = build_knife_features([5, 6, EOS], [7, 8, 9, 10, EOS], [9, EOS], max_length=6)
    assert features["teacher_input_ids"] == [5, 6, EOS, 7, 8, EOS]
    assert features["teacher_input_mask"] == [1, 1, 1, 0, 0, 0]


def test_build_features_never_truncates_the_input() -> None:
    features = build_knife_features([5, 6, 7, EOS], [8, EOS], [9, EOS], max_length=3)
    assert features["student_input_ids"] == [5, 6, 7, EOS]
    assert features["teacher_input_ids"] == [5, 6, 7, EOS]
    assert features["teacher_input_mask"] == [1, 1, 1, 1]


def test_collate_pads_uneven_lengths_and_aligns_teacher_with_student() -> None:
    rows = [
        build_knife_features([5, 6, EOS], [7, EOS], [9, EOS], max_length=32),
        build_knife_features([5, EOS], [7, 8, 9, 10, EOS], [9, 10, 11, EOS], max_length=32),
        build_knife_features([3, 4, 5, 6, EOS], [8, EOS], [EOS], max_length=32),
    ]
    batch = collate_knife(rows, pad_token_id=PAD)
    student, teacher = batch["student_input_ids"], batch["teacher_input_ids"]
    assert student.shape == (3, 5) and teacher.shape == (3, 7)
    assert batch["student_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["teacher_attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ]
    assert batch["teacher_cross_attention_mask"].tolist() == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
    ]
    align = batch["input_alignment_mask"]
    assert align.shape == student.shape
    assert torch.equal(align, batch["teacher_cross_attention_mask"][:, : student.shape[1]])
    width = student.shape[1]
    assert torch.equal(teacher[:, :width] * align, student * align)
    assert batch["labels"].tolist() == [[9, EOS, -100, -100], [9, 10, 11, EOS], [EOS, -100, -100, -100]]
    assert batch["decoder_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_uses_the_given_pad_token() -> None:
    rows = [
        build_knife_features([5, EOS], [7, EOS], [9, EOS], max_length=8),
        build_knife_features([5, 6, EOS], [7, 8, EOS], [9, EOS], max_length=8),
    ]
    batch = collate_knife(rows, pad_token_id=42)
    assert batch["student_input_ids"][0].tolist() == [5, EOS, 42]
    assert batch["teacher_input_ids"][0].tolist() == [5, EOS, 7, EOS, 42, 42]


def test_collate_rejects_empty_batch() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate_knife([], pad_token_id=PAD)
