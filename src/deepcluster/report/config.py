"""ReportConfig: what ``deepcluster report`` draws and how much data it samples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from deepcluster.core.config import StrictModel


class ReportConfig(StrictModel):
    """Saved as ``report_config.yaml`` beside ``report.html`` so the page can be remade."""

    checkpoint: str = "last"  # the trained network: last, or a cycle with a kept checkpoint
    compare_random: bool = True  # draw every picture for the random initialisation too
    seed: int = 0
    # Pictures use a seeded sample of the run's training images, so a report of a
    # million-image run costs the same as one of Fashion-MNIST.
    sample: int = Field(5000, ge=20)
    # The numbers section (linear probes, kNN, low-shot) runs `deepcluster evaluate`'s suite,
    # cached in RUN/eval/cache, on the checkpoints above; needs labels and a test split.
    numbers: bool = True
    protocols: list[Literal["linear", "knn", "lowshot"]] = Field(default_factory=lambda: ["linear", "knn", "lowshot"])
    map_method: Literal["tsne", "umap"] = "tsne"
    map_points: int = Field(2000, ge=10)
    queries: int = Field(6, ge=1)
    neighbors: int = Field(8, ge=1)
    # None: the last convolutional probe layer
    activation_layer: str | None = None
    units: int = Field(12, ge=1)
    ascent_channels: int = Field(8, ge=1)
    ascent_steps: int = Field(150, ge=1)
    gallery_clusters: int = Field(10, ge=1)
    per_cluster: int = Field(10, ge=1)

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _cycle_number_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v  # --set checkpoint=10 parses as an int
