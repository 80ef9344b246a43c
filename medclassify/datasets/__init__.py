"""Datasets the workflow can make for itself: the synthetic demo and MedMNIST imports."""
