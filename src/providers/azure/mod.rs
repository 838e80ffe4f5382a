//! The Azure provider: one adapter per REST surface, all through one
//! [`arm::ArmClient`].
//!
//! | module | surface | port |
//! |---|---|---|
//! | [`image_builder`] | `Microsoft.VirtualMachineImages/imageTemplates` 2025-10-01 | [`ImageBuilder`](crate::ports::ImageBuilder) |
//! | [`gallery`] | Compute Gallery image versions 2025-03-03 | [`Gallery`](crate::ports::Gallery) |
//! | [`marketplace`] | marketplace image versions 2024-11-01 (+ gallery for gallery sources) | [`BaseCatalog`](crate::ports::BaseCatalog) |
//! | [`resource_graph`] | Resource Graph 2024-04-01 | [`Inventory`](crate::ports::Inventory) |
//! | [`service_bus`] | Service Bus REST send | [`Queue`](crate::ports::Queue) |

pub mod arm;
pub mod error;
pub mod gallery;
pub mod identity;
pub mod image_builder;
pub mod marketplace;
pub mod resource_graph;
pub mod service_bus;
