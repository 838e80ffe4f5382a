//! The local provider's overhead over the bare tools.
//!
//! Builds the same busybox base with the same Shell customizer twice:
//! through `LocalProvider` end to end (template, run, sandbox, generalize,
//! capture with hashes and manifest, gallery publish with a replica), and
//! through the bare tools a shell script would call (`cp -a`, `bwrap`,
//! `mkfs.ext4 -d`, `qemu-img convert`). Prints the median of each and
//! their ratio (target ≤ 1.2).
//!
//! `cargo bench --bench local_build` (needs root, bwrap, e2fsprogs, qemu-utils).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::ports::{ImageBuilder, RunState};
use kiln::providers::local::{BaseFrom, Faults, KvmMode, LocalConfig, LocalProvider};
use kiln::store::Db;

const ITERATIONS: usize = 21;
const STEP: &str =
    "echo 'pipeline=bench' > /etc/aib-build-info\nmkdir -p /opt/app\necho ok > /opt/app/ready\n";
const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("cannot start a tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Same size rule as the provider: 1.3x content + 16 MiB, whole MiB.
fn image_mib(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let md = e.metadata().unwrap();
            total += 4096;
            if md.is_dir() {
                total += walk(&e.path());
            } else if md.is_file() {
                total += md.len().div_ceil(4096) * 4096;
            }
        }
        total
    }
    let content = walk(root);
    (content + content * 3 / 10 + (16 << 20)).div_ceil(1 << 20)
}

fn bare(base: &Path, work: &Path, i: usize) -> Duration {
    let stage = work.join(format!("bare-{i}"));
    let root = stage.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let script = stage.join("step.sh");
    std::fs::write(&script, STEP).unwrap();
    let t = Instant::now();
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", base.display()))
        .arg(&root));
    run(Command::new("bwrap")
        .arg("--bind")
        .arg(&root)
        .args([
            "/", "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
        ])
        .args(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"])
        .args([
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup",
            "--die-with-parent",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .arg("--ro-bind")
        .arg(&script)
        .args(["/tmp/.kiln/step", "--", "/bin/sh", "-e", "/tmp/.kiln/step"]));
    let img = stage.join("disk.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .args(["-L", "kiln-root"])
        .arg(&img)
        .arg(format!("{}M", image_mib(&root))));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&img)
        .arg(stage.join("disk.qcow2")));
    let d = t.elapsed();
    std::fs::remove_dir_all(&stage).unwrap();
    d
}

async fn provider_build(p: &LocalProvider, i: usize) -> Duration {
    let name = format!("bench-{i}");
    let body = serde_json::json!({
        "location": "westeurope",
        "tags": {"kiln.pipeline": "bench", "kiln.build": name},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/id": {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "bench", "version": "latest"},
            "customize": [{"type": "Shell", "name": "step", "inline": STEP.lines().collect::<Vec<_>>()}],
            "distribute": [{
                "type": "SharedImage", "runOutputName": "sig",
                "galleryImageId": format!("{SUB}/galleries/bench/images/busybox/versions/1.0.{i}"),
                "targetRegions": [{"name": "westeurope", "replicaCount": 1}]
            }]
        }
    });
    let t = Instant::now();
    p.put_template(&name, &body).await.unwrap();
    p.run(&name).await.unwrap();
    let s = p.wait_run(&name, Duration::from_secs(120)).await.unwrap();
    let d = t.elapsed();
    assert_eq!(s.run_state, RunState::Succeeded, "{}", s.message);
    // The provider removes its staging folder once the status is written;
    // like the bare path's `rm -rf`, that is not timed, but it must be done
    // before the next measurement.
    let staging = p.data_dir().join("staging").join(&name);
    while staging.exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    d
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("kiln.db")).unwrap();
    let p = LocalProvider::new(LocalConfig {
        data_dir: dir.path().join("data"),
        db,
        instance_id: "bench".into(),
        kvm: KvmMode::Off,
        faults: Faults::none(),
    })
    .unwrap();
    let base = rt
        .block_on(p.import_base("kiln:busybox:bench", "1.0.0", BaseFrom::Busybox))
        .unwrap();
    let work = dir.path().join("bare");

    // Warm up both paths (page cache, tool versions the provider caches once per process).
    bare(&base.path, &work, 1000);
    rt.block_on(provider_build(&p, 1000));

    let mut tools = Vec::new();
    let mut prov = Vec::new();
    for i in 0..ITERATIONS {
        // Interleaved, so machine noise hits both alike.
        tools.push(bare(&base.path, &work, i));
        prov.push(rt.block_on(provider_build(&p, i)));
    }
    let (t_min, pr_min) = (*tools.iter().min().unwrap(), *prov.iter().min().unwrap());
    let (t, pr) = (median(tools), median(prov));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("local_build: busybox base, one Shell step, {ITERATIONS} iterations");
    println!("                                                           median      min");
    println!(
        "  bare tools (cp -a, bwrap, mkfs.ext4, qemu-img convert): {:>7.1} ms {:>7.1} ms",
        ms(t),
        ms(t_min)
    );
    println!(
        "  LocalProvider end to end (template -> gallery version): {:>7.1} ms {:>7.1} ms",
        ms(pr),
        ms(pr_min)
    );
    println!(
        "  ratio provider / bare tools (medians): {:.2}   (mins: {:.2})   target <= 1.20",
        ms(pr) / ms(t),
        ms(pr_min) / ms(t_min)
    );
    if std::env::var_os("KILN_BENCH_LOG").is_some() {
        let name = format!("bench-{}", ITERATIONS - 1);
        let log = std::fs::read_to_string(p.log_path(&name)).unwrap();
        println!("\nlog of the last provider build:\n{log}");
    }
}
