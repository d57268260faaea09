"""Augmentation every method's views are made of: the pixel ops (``ops``), SimCLR's batched augmentation with
per-image parameters (``transform``), the ``aug`` section with one-view, two-view and device-side helpers
(``views``), and multi-crop (``multicrop``)."""
