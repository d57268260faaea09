"""Augmentation every method's views are made of: the pixel ops (``ops``), SimCLR's batched augmentation with
per-image parameters (``transform``), one-view, two-view and device-side helpers (``views``), and multi-crop
(``multicrop``). Their config sections (``aug``, ``multicrop``) are workloads/sections.py's."""
