"""DINO (Caron et al. 2021): a student matches the centred, sharpened output of a momentum teacher across crops."""
