"""Small helpers every layer may use: errors for the user, files, figures, run modes, the run's folder."""
