//! The ARM side of the simulator. Interface used by [`super::server`]:
//!
//! ```ignore
//! let world = ArmWorld::new(clock, ArmSimOptions { public_url, .. });
//! let routes: axum::Router = router(world.clone()); // ARM paths + /blob/... + /_sim/arm/...
//! ```

use std::sync::Arc;

use crate::ports::Clock;

#[derive(Debug, Clone)]
pub struct ArmSimOptions {
    /// The sim's own base URL (`http://127.0.0.1:PORT`), for links it hands out
    /// (`Azure-AsyncOperation`, `nextLink`, blob endpoints).
    pub public_url: String,
}

pub struct ArmWorld {
    pub clock: Arc<dyn Clock>,
    pub options: ArmSimOptions,
}

impl ArmWorld {
    pub fn new(clock: Arc<dyn Clock>, options: ArmSimOptions) -> Arc<Self> {
        Arc::new(Self { clock, options })
    }
}

pub fn router(world: Arc<ArmWorld>) -> axum::Router {
    let _ = world;
    axum::Router::new()
}
