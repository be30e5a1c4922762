//! ImageService against a real docker-registry on 127.0.0.1: pull (index, OCI and Docker
//! manifests, gzip / zstd / plain layers), basic auth, hosts.toml mirrors, list, status, remove, GC.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use berth_tests::image::{host_arch, Compression, Layer, LayerBuilder};
use berth_tests::registry::Registry;
use berth_tests::ImageSpec as TestImage;
use cri_server::error::Error;
use cri_server::image::manager::ImageManager;
use cri_server::image::registry::Credentials;
use cri_server::image::ImageHandlers;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::Request;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

/// A berthd config rooted in `dir`, with `certs.d` at `dir/certs.d`.
fn config_in(dir: &Path) -> cri_server::config::Config {
    let registry = cri_server::config::RegistryConfig {
        config_path: dir.join("certs.d"),
        ..Default::default()
    };
    cri_server::config::Config {
        root: dir.join("root"),
        state: dir.join("state"),
        registry,
        ..Default::default()
    }
}

/// Writes `<certs.d>/<registry>/hosts.toml`.
fn write_hosts_toml(config: &cri_server::config::Config, registry: &str, text: &str) -> PathBuf {
    let dir = config.registry.config_path.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hosts.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A layer of regular files (mode 0644).
fn layer(compression: Compression, files: &[(&str, &[u8])]) -> Layer {
    let mut builder = LayerBuilder::new();
    for (path, data) in files {
        builder = builder.file(path, 0o644, data).unwrap();
    }
    builder.finish(compression).unwrap()
}

/// A one-layer image (gzip) with `Cmd /bin/sh` and `User nobody`.
fn small_image(marker: &str) -> TestImage {
    let a = format!("a-{marker}");
    let mut image = TestImage::from_layers(vec![layer(
        Compression::Gzip,
        &[("etc/marker", a.as_bytes())],
    )])
    .with_user("nobody");
    image.cmd = vec!["/bin/sh".into()];
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_remove_over_plain_http_localhost() {
    let registry = Registry::start().await.unwrap();
    let mut host = TestImage::from_layers(vec![
        layer(
            Compression::Gzip,
            &[("bin/hello", b"hello"), ("etc/os-release", b"ID=berth")],
        ),
        layer(
            Compression::None,
            &[("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")],
        ),
        layer(Compression::Zstd, &[("data/z", b"zstd layer")]),
    ])
    .with_user("1000:1000");
    host.cmd = vec!["/bin/hello".into(), "world".into()];
    host.stop_signal = Some("SIGQUIT".into());
    host.volumes = vec!["/data".into()];
    // An OCI index: this image for the host platform, another one for linux/s390x.
    let index = host
        .push_with_index(&registry, "test/app", "1")
        .await
        .unwrap();
    let index_digest = index.tag_digest().to_owned();
    let other_config = index.other_config_digest.clone().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let images = Arc::new(ImageManager::open(&config).await.unwrap());
    let name = format!("{}/test/app:1", registry.host());

    // No hosts.toml: https is tried first, then plain http because the registry is loopback.
    let record = images.pull(&name, &Credentials::default()).await.unwrap();
    assert_eq!(record.id, index.config_digest);
    assert_eq!(record.repo_tags, vec![name.clone()]);
    assert_eq!(
        record.repo_digests,
        vec![format!("{}/test/app@{index_digest}", registry.host())]
    );
    assert_eq!(record.chain_ids.len(), 3);
    assert_eq!(record.config.cmd, vec!["/bin/hello", "world"]);
    assert_eq!(record.config.user, "1000:1000");
    assert_eq!(record.config.volumes, vec!["/data"]);
    assert_eq!(record.config.stop_signal, "SIGQUIT");
    assert!(images
        .snapshotter()
        .has_committed(record.top_chain_id().unwrap()));
    for blob in &record.blobs {
        assert!(images.content().contains(blob), "blob {blob} missing");
    }
    assert!(
        record.blobs.contains(&index_digest),
        "index is kept for GC accounting"
    );
    assert!(
        !images.content().contains(&other_config),
        "other platforms are not downloaded"
    );

    // Pulling again, and by digest, finds the same image and merges names.
    let again = images.pull(&name, &Credentials::default()).await.unwrap();
    assert_eq!(again.id, record.id);
    let by_digest = format!("{}/test/app@{index_digest}", registry.host());
    let again = images
        .pull(&by_digest, &Credentials::default())
        .await
        .unwrap();
    assert_eq!(again.repo_tags, vec![name.clone()]);
    assert_eq!(again.repo_digests.len(), 1);

    let handlers = ImageHandlers::new(images.clone());
    let list = handlers
        .list_images(Request::new(ListImagesRequest { filter: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].uid, Some(Int64Value { value: 1000 }));
    let filtered = handlers
        .list_images(Request::new(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&by_digest),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.images.len(), 1);
    let none = handlers
        .list_images(Request::new(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("nope:1"),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.images.is_empty());

    let status = handlers
        .image_status(Request::new(ImageStatusRequest {
            image: spec(&record.id[7..19]),
            verbose: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let image = status.image.unwrap();
    assert_eq!(image.id, record.id);
    assert!(image.size > 0);
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["architecture"], host_arch());
    assert_eq!(info["chainID"], record.top_chain_id().unwrap());
    let missing = handlers
        .image_status(Request::new(ImageStatusRequest {
            image: spec("missing:1"),
            verbose: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(missing.image.is_none());

    let fs = handlers
        .image_fs_info(Request::new(ImageFsInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.unwrap().value > 0);
    assert!(usage.inodes_used.unwrap().value > 0);
    assert!(usage
        .fs_id
        .as_ref()
        .unwrap()
        .mountpoint
        .ends_with("root/snapshots"));
    assert!(usage.timestamp > 0);
    assert_eq!(fs.container_filesystems.len(), 1);

    // Remove by its only tag: record, blobs and snapshots go. Removing again is fine.
    handlers
        .remove_image(Request::new(RemoveImageRequest { image: spec(&name) }))
        .await
        .unwrap();
    handlers
        .remove_image(Request::new(RemoveImageRequest { image: spec(&name) }))
        .await
        .unwrap();
    assert!(images.list().is_empty());
    for blob in &record.blobs {
        assert!(!images.content().contains(blob), "blob {blob} left behind");
    }
    for chain in &record.chain_ids {
        assert!(
            !images.snapshotter().has_committed(chain),
            "snapshot {chain} left behind"
        );
    }
    assert!(images.content().list().unwrap().is_empty());
    // Records persisted on disk are gone too.
    drop(handlers);
    let reopened = ImageManager::open(&config).await.unwrap();
    assert!(reopened.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    let registry = Registry::start_with_auth("berth", "s3cret").await.unwrap();
    // A single Docker schema 2 manifest (no list).
    let image = small_image("auth")
        .push_docker_manifest(&registry, "private/app", "v1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = ImageManager::open(&config_in(dir.path())).await.unwrap();
    let name = format!("{}/private/app:v1", registry.host());

    let err = images
        .pull(&name, &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("401 Unauthorized"), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::Unauthenticated
    );

    let wrong = AuthConfig {
        username: "berth".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = images
        .pull(&name, &Credentials::from_cri(Some(&wrong)).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    let scoped_elsewhere = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("berth:s3cret"),
        server_address: "other.example".into(),
        ..Default::default()
    };
    let err = images
        .pull(
            &name,
            &Credentials::from_cri(Some(&scoped_elsewhere)).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized(_)),
        "credentials for another server must not be sent"
    );

    let good = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("berth:s3cret"),
        server_address: registry.host(),
        ..Default::default()
    };
    let record = images
        .pull(&name, &Credentials::from_cri(Some(&good)).unwrap())
        .await
        .unwrap();
    assert_eq!(record.id, image.config_digest);
    assert_eq!(
        record.repo_digests,
        vec![format!(
            "{}/private/app@{}",
            registry.host(),
            image.tag_digest()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_mirror_for_an_unreachable_upstream() {
    let registry = Registry::start().await.unwrap();
    let image = small_image("mirror")
        .push(&registry, "team/app", "2")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    write_hosts_toml(
        &config,
        "registry.invalid",
        &format!(
            "server = \"https://registry.invalid\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host()
        ),
    );
    let images = ImageManager::open(&config).await.unwrap();
    let record = images
        .pull("registry.invalid/team/app:2", &Credentials::default())
        .await
        .unwrap();
    assert_eq!(record.id, image.config_digest);
    assert_eq!(record.repo_tags, vec!["registry.invalid/team/app:2"]);
    assert_eq!(
        images.resolve("registry.invalid/team/app:2").unwrap().id,
        image.config_digest
    );

    // The mirror answers 404 and the upstream is unreachable: the 404 is what is reported.
    let err = images
        .pull("registry.invalid/team/none:1", &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("registry.invalid/team/none:1 not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_are_classified() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = ImageManager::open(&config_in(dir.path())).await.unwrap();

    let err = images
        .pull(
            &format!("{}/library/nope:1", registry.host()),
            &Credentials::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);

    let closed = format!("127.0.0.1:{}/x:1", berth_tests::slot::free_port().unwrap());
    let err = images
        .pull(&closed, &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    let err = images
        .pull("Not A Reference", &Credentials::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(images.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_tag_moves_and_shared_layers() {
    let registry = Registry::start().await.unwrap();
    let base = layer(Compression::Gzip, &[("base", b"shared base layer")]);
    let v1_spec = TestImage::from_layers(vec![
        base.clone(),
        layer(Compression::Gzip, &[("v", b"one")]),
    ]);
    let v2_spec = TestImage::from_layers(vec![base, layer(Compression::Gzip, &[("v", b"two")])]);
    let v1 = v1_spec.push(&registry, "app", "latest").await.unwrap();
    v1_spec.push(&registry, "app", "v1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(ImageManager::open(&config_in(dir.path())).await.unwrap());
    let latest = format!("{}/app:latest", registry.host());
    let tag_v1 = format!("{}/app:v1", registry.host());

    let mut tasks = Vec::new();
    for name in [&latest, &tag_v1, &latest, &tag_v1] {
        let (images, name) = (images.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            images.pull(&name, &Credentials::default()).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().id, v1.config_digest);
    }
    let record_v1 = images.resolve(&v1.config_digest).unwrap();
    assert_eq!(record_v1.repo_tags.len(), 2);

    // `latest` moves to v2; v1 keeps `v1`. The shared base layer is downloaded once and kept.
    let v2 = v2_spec.push(&registry, "app", "latest").await.unwrap();
    let record_v2 = images.pull(&latest, &Credentials::default()).await.unwrap();
    assert_eq!(record_v2.id, v2.config_digest);
    assert_eq!(record_v2.chain_ids[0], record_v1.chain_ids[0]);
    assert_eq!(
        images.resolve(&v1.config_digest).unwrap().repo_tags,
        vec![tag_v1.clone()]
    );
    assert_eq!(images.resolve(&latest).unwrap().id, v2.config_digest);

    // Removing v1 by id keeps everything v2 uses.
    images.remove(&v1.config_digest).await.unwrap();
    assert!(images.resolve(&tag_v1).is_err());
    assert!(
        images.content().contains(&v1_spec.layers[0].digest),
        "shared layer removed"
    );
    assert!(
        !images.content().contains(&v1_spec.layers[1].digest),
        "v1-only layer kept"
    );
    assert!(!images.content().contains(&v1.config_digest));
    assert!(images.snapshotter().has_committed(&record_v2.chain_ids[0]));
    assert!(images.snapshotter().has_committed(&record_v2.chain_ids[1]));
    assert!(!images.snapshotter().has_committed(&record_v1.chain_ids[1]));
    images.remove(&v2.config_digest[7..20]).await.unwrap();
    assert!(images.list().is_empty());
    assert!(images.content().list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_frees_what_an_interrupted_pull_left() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let images = ImageManager::open(&config).await.unwrap();

    // What a pull that died after fetching a layer and unpacking it leaves: a blob and a committed chain
    // that no image record names.
    let orphan = layer(Compression::None, &[("orphan", b"bytes")]);
    let (layer, digest) = (orphan.blob, orphan.digest);
    let mut writer = images
        .content()
        .writer(&digest, Some(layer.len() as u64))
        .unwrap();
    writer.write_all(&layer).unwrap();
    writer.commit().unwrap();
    let blob = images.content().blob_path(&digest).unwrap();
    let chain = images
        .snapshotter()
        .unpack_layer(None, &blob, snapshotter::Compression::None, &digest)
        .unwrap();
    assert!(images.snapshotter().has_committed(&chain));
    drop(images);

    let reopened = ImageManager::open(&config).await.unwrap();
    assert!(
        !reopened.content().contains(&digest),
        "orphan blob survived start-up"
    );
    assert!(
        !reopened.snapshotter().has_committed(&chain),
        "orphan layer survived start-up"
    );
}
