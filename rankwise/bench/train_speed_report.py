"""Markdown of `rankwise.bench.train_speed` results: Trainer vs hand-written loop, batched
augmentation throughput, and the Fashion-MNIST end-to-end run."""

from __future__ import annotations

from typing import Any

GOAL_OVERHEAD_PCT = 5.0


def train_speed_markdown(results: dict[str, Any]) -> str:
    """Markdown for `{"throughput": …, "augmentation": …, "fashion_mnist": …}` (each optional,
    as returned by the three measurements)."""
    lines = ["## Trainer speed", ""]
    t = results.get("throughput")
    if t:
        verdict = "meets" if t["meets_goal"] else "misses"
        lines += [
            f"`Trainer` vs a minimal hand-written loop: {t['model']}, batch {t['batch_size']}, "
            f"{t['threads']} thread(s), {t['steps_per_round']} steps × {t['rounds']} interleaved "
            f"rounds (medians), no augmentation in either, {t['optimizer']}; {t['data']}"
            f"{'; denormals flushed to zero' if t.get('flush_denormal') else ''}.", "",
            "| loop | images/s | ms/step |", "|---|---:|---:|",
            f"| rankwise Trainer | {t['trainer_images_per_s']:,.1f} | "
            f"{t['trainer_step_ms']:,.1f} |",
            f"| hand-written | {t['reference_images_per_s']:,.1f} | "
            f"{t['reference_step_ms']:,.1f} |", "",
            f"Overhead {t['overhead_pct']:+.1f} % (goal ≤ {t['goal_overhead_pct']:g} %: "
            f"{verdict} it). Per-epoch bookkeeping outside the loop (checkpoint, log line): "
            f"{t['bookkeeping_s_per_epoch']:.3f} s; projected overhead on a 50,000-image epoch "
            f"{t['overhead_pct_full_epoch']:+.1f} %.", ""]
    a = results.get("augmentation")
    if a:
        lines += [
            f"`BatchLoader` on {'×'.join(map(str, a['shape']))} uint8 images, batch "
            f"{a['batch_size']}, {a['threads']} thread(s), median of {a['rounds']} epochs of "
            f"{a['size']:,} images:", "",
            "| loader | images/s |", "|---|---:|",
            f"| gather + normalize | {a['plain_images_per_s']:,.0f} |",
            f"| + pad-4 crop + flip | {a['augment_images_per_s']:,.0f} |", "",
            f"Augmentation adds {a['augment_us_per_image']:.1f} µs per image.", ""]
        if t and t.get("trainer_images_per_s"):
            share = a["augment_us_per_image"] * 1e-6 * t["trainer_images_per_s"]
            lines += [f"That is {100 * share:.2f} % of a {t['model']} training step at the "
                      "measured trainer speed.", ""]
    f = results.get("fashion_mnist")
    if f:
        lines += [
            f"Fashion-MNIST, {f['model']} ({f['params']:,} params), {f['epochs']} epochs, "
            f"{f['train_samples']:,} train / {f['test_samples']:,} test images, "
            f"{f['threads']} thread(s): test accuracy {100 * f['test_acc']:.2f} %, train "
            f"accuracy {100 * f['train_acc']:.2f} %, wall {f['wall_s']:.1f} s "
            f"({f['images_per_s']:,.0f} images/s).", ""]
    env = next((r["env"] for r in (t, a, f) if r and r.get("env")), None)
    if env:
        lines += [f"_{env['date']}, torch {env['torch']}, {env['machine']}, "
                  f"{env['cpu_count']} CPUs, commit {env['git_commit']}._", ""]
    return "\n".join(lines)
