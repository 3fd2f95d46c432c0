"""The practitioner's audit: its inputs (a model or samples, a streamed training set), its criteria
and its report. The entry point is :func:`diffmem.audit` (:mod:`diffmem.auditing.audit`); the
package is not called ``audit`` so that the function never shadows a module."""
