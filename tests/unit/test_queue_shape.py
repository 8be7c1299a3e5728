"""qshape-like counts: age buckets, domains, rendering (roost.queue.shape)."""

from __future__ import annotations

import pytest

from roost.queue.shape import DEFAULT_BUCKETS, ShapeEntry, queue_shape, render_shape

NOW = 1_800_000_000.0
MINUTE = 60.0


def entry(age_minutes: float, *recipients: str, sender: str = "s@sender.example") -> ShapeEntry:
    return ShapeEntry(NOW - age_minutes * MINUTE, sender, recipients)


def test_default_buckets_are_qshapes() -> None:
    assert DEFAULT_BUCKETS == (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@pytest.mark.parametrize(
    ("age", "column"),
    [
        (0, 0),
        (4.99, 0),
        (5, 1),  # a bound belongs to the next bucket: "younger than 5 minutes" is column 5
        (9, 1),
        (10, 2),
        (1279, 8),
        (1280, 9),  # 1280+
        (100_000, 9),
    ],
)
def test_a_message_counts_in_the_first_bucket_whose_bound_is_above_its_age(
    age: float, column: int
) -> None:
    shape = queue_shape([entry(age, "a@example.org")], NOW)
    expected = [0] * 10
    expected[column] = 1
    assert shape.rows == {"example.org": expected}
    assert shape.total == expected


def test_recipients_count_per_domain_once_per_message_and_address() -> None:
    shape = queue_shape(
        [
            entry(1, "a@Example.ORG", "b@example.org", "a@Example.ORG", "c@example.net"),
            entry(30, "d@example.org."),
        ],
        NOW,
    )
    assert shape.rows["example.org"][0] == 2  # the duplicate a@ is one
    assert shape.rows["example.org"][3] == 1  # trailing dot and case folded
    assert sum(shape.rows["example.net"]) == 1
    assert sum(shape.total) == 4


def test_future_arrival_counts_as_age_zero() -> None:
    shape = queue_shape([entry(-10, "a@example.org")], NOW)
    assert shape.total[0] == 1


def test_by_sender_counts_each_message_once_and_names_the_null_sender() -> None:
    shape = queue_shape(
        [
            entry(1, "a@x.example", "b@y.example", sender="bob@sender.example"),
            entry(1, "c@x.example", sender=""),
            entry(1, "d@x.example", sender="postmaster"),
        ],
        NOW,
        by_sender=True,
    )
    assert {name: sum(row) for name, row in shape.rows.items()} == {
        "sender.example": 1,
        "MAILER-DAEMON": 1,
        "(local)": 1,
    }


def test_render_like_qshape_with_right_aligned_columns_and_rows_by_count() -> None:
    lines = render_shape(
        queue_shape(
            [
                entry(600, "u@example.org", "v@example.org"),
                entry(2000, "w@example.net"),
                entry(1, "z@example.org"),
            ],
            NOW,
        )
    )
    assert lines == [
        "            T 5 10 20 40 80 160 320 640 1280 1280+",
        "      TOTAL 4 1  0  0  0  0   0   0   2    0     1",
        "example.org 3 1  0  0  0  0   0   0   2    0     0",
        "example.net 1 0  0  0  0  0   0   0   0    0     1",
    ]


def test_render_widens_a_column_for_big_counts_and_sorts_ties_by_name() -> None:
    entries = [entry(1, f"u{i}@b.example") for i in range(12)]
    entries += [entry(1, f"u{i}@a.example") for i in range(12)]
    heading, total, first, second = render_shape(queue_shape(entries, NOW))
    assert heading.startswith("           T  5 10")
    assert total == "    TOTAL 24 24  0  0  0  0   0   0   0    0     0"
    assert first.split()[0] == "a.example" and second.split()[0] == "b.example"


def test_empty_queue_renders_a_zero_total() -> None:
    assert render_shape(queue_shape([], NOW)) == [
        "      T 5 10 20 40 80 160 320 640 1280 1280+",
        "TOTAL 0 0  0  0  0  0   0   0   0    0     0",
    ]


@pytest.mark.parametrize("buckets", [(), (5, 5), (10, 5)])
def test_buckets_must_increase(buckets: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        queue_shape([], NOW, buckets=buckets)


def test_custom_buckets() -> None:
    shape = queue_shape([entry(3, "a@example.org")], NOW, buckets=(1, 2, 4))
    assert shape.total == [0, 0, 1, 0]
    assert render_shape(shape)[0].split() == ["T", "1", "2", "4", "4+"]
