"""Small pieces shared by the stages and the workflows: the user-error type, field checks, the driver lease,
the row reader (rows.py), and the training knobs and run to final/ of the SFT and RL stages (training.py)."""
