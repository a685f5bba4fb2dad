"""A run's folder (what it holds, written and read in one place), the index of runs, imports of other tools' runs."""
