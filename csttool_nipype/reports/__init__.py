"""Cohort outputs built after the fact from what is on disk: CSV tables and reports."""
