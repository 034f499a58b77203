"""The driving asset editor: inserts vehicles and pedestrians into generated frames."""
