"""Timeline markers: parsed once each, in time order, from a log with Ray's prefixes."""

from trainer.tracking.timeline import parse_marks


def test_marks_are_parsed_once_in_time_order_through_ray_prefixes() -> None:
    lines = [
        'REASONDISTILL_MARK {"event": "b", "t": 2.0, "pid": 7}',
        "some other output",
        '(RayTrainWorker pid=7) REASONDISTILL_MARK {"event": "a", "t": 1.0, "pid": 7}',
        '(RayTrainWorker pid=7) REASONDISTILL_MARK {"event": "a", "t": 1.0, "pid": 7}',  # forwarded twice
        '(RayTrainWorker pid=8) REASONDISTILL_MARK {"event": "a", "t": 1.0, "pid": 8}',
    ]
    assert [(m["event"], m["pid"]) for m in parse_marks(lines)] == [("a", 7), ("a", 8), ("b", 7)]
