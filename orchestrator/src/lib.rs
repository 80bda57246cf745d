//! Orchestration of the SAM-Med3D pipeline. Today: [`demo`], the end-to-end CPU run
//! on a phantom corpus (ingest → train → evaluate) that the README's first command
//! starts. Stage planning and the local/Slurm/Kubernetes launchers come next.
#![deny(missing_docs)]

pub mod demo;
