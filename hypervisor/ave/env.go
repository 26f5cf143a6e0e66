package ave

import (
	"fmt"
	"os"
	"strconv"
)

// Environment variables OptionsFromEnv reads, so that programs (the
// examples, a plugin's command line) take credentials from the environment
// rather than from flags that show in process listings.
const (
	EnvUsername = "AOC_USERNAME"
	EnvPassword = "AOC_PASSWORD"
	EnvSource   = "AOC_SOURCE"               // LOCAL (default), LDAP, ...
	EnvToken    = "AOC_TOKEN"                // an API key instead of username and password
	EnvCAFile   = "AOC_CA_FILE"              // PEM file of certificates to trust
	EnvInsecure = "AOC_INSECURE_SKIP_VERIFY" // "true" turns TLS verification off
)

// OptionsFromEnv returns Options for baseURL with credentials and TLS
// settings from the environment variables above. Fields it does not set
// keep their defaults; New validates the result.
func OptionsFromEnv(baseURL string) (Options, error) {
	o := Options{
		BaseURL:  baseURL,
		Username: os.Getenv(EnvUsername),
		Password: os.Getenv(EnvPassword),
		Source:   os.Getenv(EnvSource),
		Token:    os.Getenv(EnvToken),
	}
	if f := os.Getenv(EnvCAFile); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return Options{}, fmt.Errorf("ave: %s: %w", EnvCAFile, err)
		}
		o.CABundle = pem
	}
	if v := os.Getenv(EnvInsecure); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Options{}, fmt.Errorf("ave: %s=%q: want true or false", EnvInsecure, v)
		}
		o.InsecureSkipVerify = b
	}
	return o, nil
}
