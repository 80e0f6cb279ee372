"""The issue's targets, each judged against figures from the same benchmark run."""

# The verdicts are Markdown for people: they use × and ≤ on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

from typing import Any

from bench_config import RAW, RB
from bench_stats import table

TARGET_RATIO = 1.15
TARGET_LATENCY_P50 = 0.010
TARGET_TRIGGER_CPU = 0.5
TARGET_VALIDATE_CPU = 0.3
TARGET_FLAT = 0.20
TARGET_LINEAR = 12.0  # for 10× the steps (issue 17); scaled for other size ratios
TARGET_FOREACH_S = 5.0  # a 10,000-instance for_each fans out, and is cancelled, in this
POLLING_SLACK = 0.010  # result-after-start may exceed raw Celery's by this much, no more
RSS_SLACK_MB, RSS_SLACK_FRACTION = 5.0, 0.10


def targets_section(
    ratios: list[tuple[str, float, str]],
    latency: dict[str, Any],
    fan_growth: dict[str, Any],
    growth: dict[str, Any],
) -> str:
    rows = []

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**missed**")

    if ratios:
        worst = max(ratios, key=lambda r: r[1])
        rows.append(
            [
                f"runbook-celery / raw Celery ≤ {TARGET_RATIO} (scenarios 1, 2, every cell)",
                f"worst: {worst[0]}: {worst[2]}; cells over: "
                f"{sum(1 for r in ratios if r[1] > TARGET_RATIO)} of {len(ratios)}",
                verdict(worst[1] <= TARGET_RATIO),
            ]
        )
    rb = latency.get(RB)
    if rb:
        rows.append(
            [
                f"submit → first step start p50 ≤ {TARGET_LATENCY_P50 * 1000:.0f} ms",
                f"p50 {rb['start_p50'] * 1000:.1f} ms, p95 {rb['start_p95'] * 1000:.1f} ms",
                verdict(rb["start_p50"] <= TARGET_LATENCY_P50),
            ]
        )
        raw = latency.get(RAW)
        if raw:
            gap = rb["after_p50"] - raw["after_p50"]
            rows.append(
                [
                    "no fixed polling floor in wait() (result after step start within "
                    f"{POLLING_SLACK * 1000:.0f} ms of raw Celery's)",
                    f"runbook {rb['after_p50'] * 1000:.1f} ms, "
                    f"raw {raw['after_p50'] * 1000:.1f} ms",
                    verdict(gap <= POLLING_SLACK),
                ]
            )
    for what, value in latency.get("cold", {}).items():
        if "trigger" in what:
            rows.append(
                [
                    f"`{what}` ≤ {TARGET_TRIGGER_CPU} s process time",
                    f"{value:.3f} s",
                    verdict(value <= TARGET_TRIGGER_CPU),
                ]
            )
        if "validate" in what:
            rows.append(
                [
                    f"`{what}` ≤ {TARGET_VALIDATE_CPU} s process time",
                    f"{value:.3f} s",
                    verdict(value <= TARGET_VALIDATE_CPU),
                ]
            )
    flat = growth.get("flat", {})
    if len(flat) >= 2:
        worst = max(flat.items(), key=lambda kv: abs(kv[1] - 1))
        rows.append(
            [
                f"per-step cost flat within ±{TARGET_FLAT:.0%} across sizes",
                ", ".join(f"{k}: {v:.2f}×" for k, v in flat.items()),
                verdict(abs(worst[1] - 1) <= TARGET_FLAT),
            ]
        )
    if RB in fan_growth and RAW in fan_growth:
        rows.append(
            [
                "fan-out cost per branch grows no more than raw Celery's (×1.15 slack)",
                f"runbook {fan_growth[RB]:.2f}×, raw {fan_growth[RAW]:.2f}×",
                verdict(fan_growth[RB] <= fan_growth[RAW] * TARGET_RATIO),
            ]
        )
    if "linear" in growth:
        small, big, ratio = growth["linear"]
        limit = TARGET_LINEAR * big / small / 10
        rows.append(
            [
                f"{big:,}-step linear workflow ≤ {limit:g} × the time of a {small:,}-step one",
                f"{ratio:.1f}×",
                verdict(ratio <= limit),
            ]
        )
    if "foreach" in growth:
        fe = growth["foreach"]
        for what, key in (("fans out", "fan_out_s"), ("cancel takes effect", "cancel_s")):
            rows.append(
                [
                    f"{fe['items']:,}-instance for_each: {what} in ≤ {TARGET_FOREACH_S:g} s",
                    f"{fe[key]:.2f} s",
                    verdict(fe[key] <= TARGET_FOREACH_S),
                ]
            )
    if "rss" in growth:
        before, after = growth["rss"]
        limit = max(RSS_SLACK_MB, before * RSS_SLACK_FRACTION)
        rows.append(
            [
                f"worker memory flat (grows ≤ max({RSS_SLACK_MB:.0f} MB, "
                f"{RSS_SLACK_FRACTION:.0%}))",
                f"{before:.1f} MB → {after:.1f} MB",
                verdict(after - before <= limit),
            ]
        )
    return table(["target", "measured", "verdict"], rows) if rows else "No targets measured."
