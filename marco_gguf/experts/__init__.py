"""Experts: which ones each text uses (measured from llama.cpp's routing), reports and plots, and pruning."""
