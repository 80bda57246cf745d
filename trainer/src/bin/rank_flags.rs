//! `--rank`, `--world`, `--master`: the flags over the launch contract's variables,
//! for every command that joins the ranks (`train`, `bench all-reduce`).

use s3_trainer::launch_env::LaunchFlags;

/// Where this process stands among the ranks; each flag wins over its variable
/// (DESIGN §10).
#[derive(clap::Args)]
pub struct RankFlags {
    /// This rank [default: RANK, SLURM_PROCID, or the pod's index].
    #[arg(long)]
    rank: Option<usize>,
    /// Number of ranks [default: WORLD_SIZE, SLURM_NTASKS].
    #[arg(long)]
    world: Option<usize>,
    /// Rendezvous HOST:PORT of the all-reduce: rank 0 listens there, the other ranks
    /// connect (needed when world > 1) [default: MASTER_ADDR:MASTER_PORT].
    #[arg(long, value_name = "HOST:PORT")]
    master: Option<String>,
}

impl RankFlags {
    /// The library's form of these flags.
    pub fn launch(self) -> LaunchFlags {
        LaunchFlags { rank: self.rank, world: self.world, master: self.master }
    }
}
