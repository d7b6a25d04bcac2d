"""Prometheus scrapes, parsed: values by sample name and labels, and smartgate's decision counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Metrics:
    """A parsed scrape: families by name, and sample values by (sample name, labels)."""

    raw: str
    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    rows: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # every sample's name and labels

    @classmethod
    def parse(cls, text: str) -> Metrics:
        metrics = cls(raw=text, types={})
        for family in text_string_to_metric_families(text):
            metrics.types[family.name] = family.type
            for sample in family.samples:
                metrics.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
                metrics.rows.append((sample.name, dict(sample.labels)))
        return metrics

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(value for series, value in self.series(name).items() if wanted <= series)

    def buckets(self, name: str) -> dict[float, float]:
        return {float(dict(labels)["le"]): value for labels, value in self.series(name + "_bucket").items()}


def decision_counts(metrics: Metrics) -> dict[tuple[str, str, str], int]:
    counts = {}
    for labels, value in metrics.series("smartgate_decisions_total").items():
        named = dict(labels)
        counts[(named["outcome"], named["status"], named["reason"])] = int(value)
    return counts
