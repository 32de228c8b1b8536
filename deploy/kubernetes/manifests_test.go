// Package kubernetes holds Castellan's Kubernetes manifests (kustomize);
// its test decodes every object strictly into the k8s.io/api types and
// checks that names, labels, selectors and ports refer to each other.
package kubernetes

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/shim"
)

// kustomization is the part of kustomize's Kustomization the manifests use.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		Digest  string `json:"digest"`
	} `json:"images"`
	ConfigMapGenerator []generator `json:"configMapGenerator"`
	SecretGenerator    []generator `json:"secretGenerator"`
	GeneratorOptions   struct {
		DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
	} `json:"generatorOptions"`
}

type generator struct {
	Name  string   `json:"name"`
	Files []string `json:"files"`
}

// keys are the keys of a generated ConfigMap or Secret, and their files.
func (g generator) keys() map[string]string {
	m := map[string]string{}
	for _, f := range g.Files {
		k, file, ok := strings.Cut(f, "=")
		if !ok {
			k, file = filepath.Base(f), f
		}
		m[k] = file
	}
	return m
}

// objects are the decoded manifests.
type objects struct {
	k            kustomization
	namespaces   []corev1.Namespace
	runtimes     []nodev1.RuntimeClass
	daemonSets   []appsv1.DaemonSet
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	services     []corev1.Service
	policies     []networkingv1.NetworkPolicy
	pods         []corev1.Pod
}

func decode(t *testing.T) *objects {
	t.Helper()
	o := &objects{}
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &o.k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	for _, r := range o.k.Resources {
		b, err := os.ReadFile(r)
		if err != nil {
			t.Fatalf("resource %s: %v", r, err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s #%d: %v", r, i, err)
			}
			var dst any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Namespace":
				dst = add(&o.namespaces)
			case "node.k8s.io/v1 RuntimeClass":
				dst = add(&o.runtimes)
			case "apps/v1 DaemonSet":
				dst = add(&o.daemonSets)
			case "apps/v1 Deployment":
				dst = add(&o.deployments)
			case "apps/v1 StatefulSet":
				dst = add(&o.statefulSets)
			case "v1 Service":
				dst = add(&o.services)
			case "networking.k8s.io/v1 NetworkPolicy":
				dst = add(&o.policies)
			case "v1 Pod":
				dst = add(&o.pods)
			default:
				t.Fatalf("%s #%d: unexpected object %s %s", r, i, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, dst); err != nil {
				t.Fatalf("%s #%d (%s): %v", r, i, tm.Kind, err)
			}
		}
	}
	return o
}

// add appends a zero T to list and returns it, to decode into.
func add[T any](list *[]T) *T {
	var zero T
	*list = append(*list, zero)
	return &(*list)[len(*list)-1]
}

// podSpec is a workload's pod template or a pod, by name.
type podSpec struct {
	name   string
	labels map[string]string
	spec   corev1.PodSpec
}

func (o *objects) podSpecs() []podSpec {
	var ps []podSpec
	for _, d := range o.daemonSets {
		ps = append(ps, podSpec{"DaemonSet " + d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	for _, d := range o.deployments {
		ps = append(ps, podSpec{"Deployment " + d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	for _, d := range o.statefulSets {
		spec := *d.Spec.Template.Spec.DeepCopy()
		for _, c := range d.Spec.VolumeClaimTemplates {
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: c.Name,
				VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c.Name}}})
		}
		ps = append(ps, podSpec{"StatefulSet " + d.Name, d.Spec.Template.Labels, spec})
	}
	for _, p := range o.pods {
		ps = append(ps, podSpec{"Pod " + p.Name, p.Labels, p.Spec})
	}
	return ps
}

// matching returns the pod specs sel selects.
func (o *objects) matching(t *testing.T, what string, sel *metav1.LabelSelector) []podSpec {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("%s: selector: %v", what, err)
	}
	var out []podSpec
	for _, p := range o.podSpecs() {
		if !s.Empty() && s.Matches(labels.Set(p.labels)) {
			out = append(out, p)
		}
	}
	return out
}

// hasPort says whether a pod spec's containers declare port (by name or
// number).
func hasPort(p podSpec, name string, number int32) bool {
	for _, c := range p.spec.Containers {
		for _, cp := range c.Ports {
			if (name != "" && cp.Name == name) || (number != 0 && cp.ContainerPort == number) {
				return true
			}
		}
	}
	return false
}

func TestManifests(t *testing.T) {
	o := decode(t)
	k := o.k
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: %s %s", k.APIVersion, k.Kind)
	}
	if len(o.namespaces) != 1 || o.namespaces[0].Name != k.Namespace {
		t.Errorf("namespace %q: want one Namespace object of that name", k.Namespace)
	}

	// Workloads select their own pods.
	for _, d := range o.daemonSets {
		checkSelector(t, "DaemonSet "+d.Name, d.Spec.Selector, d.Spec.Template.Labels)
	}
	for _, d := range o.deployments {
		checkSelector(t, "Deployment "+d.Name, d.Spec.Selector, d.Spec.Template.Labels)
	}
	for _, d := range o.statefulSets {
		checkSelector(t, "StatefulSet "+d.Name, d.Spec.Selector, d.Spec.Template.Labels)
		if !slices.ContainsFunc(o.services, func(s corev1.Service) bool { return s.Name == d.Spec.ServiceName }) {
			t.Errorf("StatefulSet %s: serviceName %s is no Service", d.Name, d.Spec.ServiceName)
		}
	}

	// Services select pods that have their target ports.
	for _, s := range o.services {
		pods := o.matching(t, "Service "+s.Name, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		if len(pods) == 0 {
			t.Errorf("Service %s: selects no pods", s.Name)
		}
		for _, p := range pods {
			for _, sp := range s.Spec.Ports {
				if !hasPort(p, sp.TargetPort.StrVal, sp.TargetPort.IntVal) {
					t.Errorf("Service %s: port %s targets %s, which %s does not declare", s.Name, sp.Name, sp.TargetPort.String(), p.name)
				}
			}
		}
	}

	// Network policies apply to pods that exist and let in what their
	// Services send.
	for _, np := range o.policies {
		pods := o.matching(t, "NetworkPolicy "+np.Name, &np.Spec.PodSelector)
		if len(pods) == 0 {
			t.Errorf("NetworkPolicy %s: selects no pods", np.Name)
		}
		for _, in := range np.Spec.Ingress {
			for _, from := range in.From {
				if from.PodSelector != nil && len(o.matching(t, "NetworkPolicy "+np.Name+" from", from.PodSelector)) == 0 {
					t.Errorf("NetworkPolicy %s: ingress from pods that do not exist (%v)", np.Name, from.PodSelector.MatchLabels)
				}
			}
			for _, p := range pods {
				for _, port := range in.Ports {
					if !hasPort(p, port.Port.StrVal, port.Port.IntVal) {
						t.Errorf("NetworkPolicy %s: port %s is not one of %s's", np.Name, port.Port.String(), p.name)
					}
				}
			}
		}
		for _, eg := range np.Spec.Egress {
			for _, to := range eg.To {
				if to.PodSelector != nil {
					targets := o.matching(t, "NetworkPolicy "+np.Name+" to", to.PodSelector)
					if len(targets) == 0 {
						t.Errorf("NetworkPolicy %s: egress to pods that do not exist", np.Name)
					}
					for _, p := range targets {
						for _, port := range eg.Ports {
							if !hasPort(p, port.Port.StrVal, port.Port.IntVal) {
								t.Errorf("NetworkPolicy %s: egress port %s is not one of %s's", np.Name, port.Port.String(), p.name)
							}
						}
					}
				}
			}
		}
	}

	// ConfigMaps, Secrets and images come from the kustomization.
	cms := map[string]generator{}
	for _, g := range k.ConfigMapGenerator {
		cms[g.Name] = g
	}
	secrets := map[string]generator{}
	for _, g := range k.SecretGenerator {
		secrets[g.Name] = g
	}
	castellanImage := ""
	for _, im := range k.Images {
		if im.Name == "castellan" {
			castellanImage = im.Name
			if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(im.Digest) || im.NewName == "" {
				t.Errorf("image castellan: newName %q digest %q, want a registry name pinned by digest", im.NewName, im.Digest)
			}
		}
	}
	if castellanImage == "" {
		t.Fatal("kustomization.yaml: no images entry for castellan")
	}
	usesCastellan := 0
	for _, p := range o.podSpecs() {
		for _, v := range p.spec.Volumes {
			if v.ConfigMap != nil {
				if _, ok := cms[v.ConfigMap.Name]; !ok {
					t.Errorf("%s: volume %s: ConfigMap %s is not generated", p.name, v.Name, v.ConfigMap.Name)
				}
			}
			if v.Secret != nil {
				if _, ok := secrets[v.Secret.SecretName]; !ok {
					t.Errorf("%s: volume %s: Secret %s is not generated", p.name, v.Name, v.Secret.SecretName)
				}
				if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0 {
					t.Errorf("%s: volume %s: Secret files readable by group or others (the service refuses keys that are)", p.name, v.Name)
				}
			}
		}
		for _, c := range append(append([]corev1.Container(nil), p.spec.InitContainers...), p.spec.Containers...) {
			if c.Image == castellanImage {
				usesCastellan++
			} else if strings.Contains(c.Image, "castellan") {
				t.Errorf("%s: container %s: image %s, want %q (pinned by digest in kustomization.yaml)", p.name, c.Name, c.Image, castellanImage)
			}
			for _, e := range c.Env {
				if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil {
					g, ok := secrets[r.SecretKeyRef.Name]
					if _, has := g.keys()[r.SecretKeyRef.Key]; !ok || !has {
						t.Errorf("%s: env %s: Secret %s key %s is not generated", p.name, e.Name, r.SecretKeyRef.Name, r.SecretKeyRef.Key)
					}
				}
			}
			for _, m := range c.VolumeMounts {
				if !slices.ContainsFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
					t.Errorf("%s: container %s mounts volume %s, which the pod lacks", p.name, c.Name, m.Name)
				}
			}
			checkFileArgs(t, p, c, cms, secrets)
		}
	}
	if usesCastellan < 2 {
		t.Errorf("%d containers run the castellan image, want the shim installer and the attestation service", usesCastellan)
	}

	// The attestation service: 2 replicas sharing a CA and a nonce key.
	var attest *appsv1.Deployment
	for i := range o.deployments {
		if o.deployments[i].Name == "castellan-attest" {
			attest = &o.deployments[i]
		}
	}
	if attest == nil || attest.Spec.Replicas == nil || *attest.Spec.Replicas != 2 {
		t.Errorf("Deployment castellan-attest with 2 replicas: %v", attest)
	}

	// The RuntimeClass, its handler in the installer, its nodes, the pod.
	if len(o.runtimes) != 1 {
		t.Fatalf("%d RuntimeClasses, want 1", len(o.runtimes))
	}
	rc := o.runtimes[0]
	if rc.Name != "castellan" || rc.Handler != "castellan" {
		t.Errorf("RuntimeClass %s handler %s, want castellan and castellan", rc.Name, rc.Handler)
	}
	var installer *appsv1.DaemonSet
	for i := range o.daemonSets {
		if o.daemonSets[i].Name == "castellan-shim" {
			installer = &o.daemonSets[i]
		}
	}
	if installer == nil {
		t.Fatal("no DaemonSet castellan-shim")
	}
	if args := installer.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--handler="+rc.Handler) || !slices.Contains(args, "install") {
		t.Errorf("the installer's args %q do not install handler %s", args, rc.Handler)
	}
	if rc.Scheduling == nil || !labels.SelectorFromSet(rc.Scheduling.NodeSelector).Matches(labels.Set(installer.Spec.Template.Spec.NodeSelector)) {
		t.Errorf("the RuntimeClass schedules onto nodes the installer does not run on")
	}
	examples := 0
	for _, p := range o.pods {
		if p.Spec.RuntimeClassName != nil && *p.Spec.RuntimeClassName == rc.Name {
			examples++
		}
	}
	if examples == 0 {
		t.Error("no example Pod with runtimeClassName castellan")
	}

	// The configuration files parse.
	shimOpts, ok := cms["castellan-shim-options"]
	if !ok {
		t.Fatal("no ConfigMap castellan-shim-options")
	}
	b, err := os.ReadFile(shimOpts.keys()["shim.toml"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shim.ParseOptions(b); err != nil {
		t.Errorf("shim.toml: %v", err)
	}
	pol := cms["castellan-attest-policy"].keys()
	if _, err := policy.Load(pol["policy.toml"], pol["measurements.toml"]); err != nil {
		t.Errorf("policy: %v", err)
	}
}

func checkSelector(t *testing.T, what string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %v does not select its pods (%v): %v", what, sel, podLabels, err)
	}
}

// checkFileArgs checks that every --flag=/path argument of a castellan
// container names a file its mounts provide, with a key that the volume's
// generator makes.
func checkFileArgs(t *testing.T, p podSpec, c corev1.Container, cms, secrets map[string]generator) {
	for _, a := range c.Args {
		_, path, ok := strings.Cut(a, "=/")
		if !ok || !strings.HasPrefix(a, "--") {
			continue
		}
		path = "/" + path
		flag, _, _ := strings.Cut(a, "=")
		found := false
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(m.MountPath, path+"/") {
				found = true // a folder that holds mounts (the node's root)
			}
			rel, err := filepath.Rel(m.MountPath, path)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue
			}
			for _, v := range p.spec.Volumes {
				if v.Name != m.Name || found {
					continue
				}
				switch {
				case v.ConfigMap != nil:
					_, found = cms[v.ConfigMap.Name].keys()[rel]
				case v.Secret != nil:
					_, found = secrets[v.Secret.SecretName].keys()[rel]
				default:
					found = true // a folder (emptyDir, hostPath)
				}
			}
		}
		if !found {
			t.Errorf("%s: container %s: %s names %s, which no mounted ConfigMap, Secret or folder provides", p.name, c.Name, flag, path)
		}
	}
}
