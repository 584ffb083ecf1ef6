"""Trainer plugins. Each framework is a sub-package run as a child process under the job protocol."""
