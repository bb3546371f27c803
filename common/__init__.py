"""Small pieces shared by the stages and the workflows: the user-error type, field checks, the driver lease."""
