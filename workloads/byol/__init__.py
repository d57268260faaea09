"""BYOL (Grill et al. 2020): an online network predicts a momentum target network's projection; no negatives."""
