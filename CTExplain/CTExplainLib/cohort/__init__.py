"""Cohorts: the cases of one ``ctexplain explain`` split between the processes ``torchrun``
starts (on one machine or many), and the cohort summary rank 0 writes once all are done."""
