// kiln in Azure: the Function App (Linux, custom handler), its storage, the
// Service Bus queues between functions, the gallery kiln publishes to, the
// identities and their roles, the Key Vault holding the app's secrets,
// Application Insights, and the Event Grid subscription that tells
// `base_image_events` when a parent gallery publishes a version.
//
// Deploy into the resource group that will hold kiln and its image templates:
//   az deployment group create -g rg-kiln -f infra/main.bicep \
//     -p parentGalleryResourceGroup=rg-base-images parentGalleryName=corpBase eventsKey=<random>
// The deployer needs Owner (or User Access Administrator plus Contributor) on
// the subscription: the marketplace read kiln needs is granted at subscription
// scope (modules/subscription-roles.bicep).
// Not deployed from this repository's CI; see infra/README.md for what to check.

targetScope = 'resourceGroup'

@description('Region of every regional resource; also the marketplace region kiln watches (KILN_AZURE_LOCATION).')
param location string = resourceGroup().location

@description('Short prefix for resource names.')
@minLength(3)
@maxLength(11)
param prefix string = 'kiln'

@description('Run the app as a user-assigned identity (true) or its system-assigned one (false).')
param useUserAssignedIdentity bool = false

@description('Name of the Compute Gallery kiln publishes versions to (created here).')
param galleryName string = '${prefix}Gallery'

@description('Resource group of the parent gallery whose new versions trigger builds. Empty: no Event Grid subscription.')
param parentGalleryResourceGroup string = ''

@description('Name of the parent gallery in that resource group.')
param parentGalleryName string = ''

@description('Create the Event Grid subscription. Leave false on the first deployment: Event Grid checks the function endpoint, which exists only once the app code is published.')
param subscribeToParentGallery bool = false

@description('An Event Grid system topic that already watches the parent gallery\'s resource group (Azure allows one per source). Empty: create one.')
param existingSystemTopicName string = ''

@description('Key required on the events webhook (KILN_EVENTS_KEY). Stored in the Key Vault; the app reads it through a Key Vault reference.')
@secure()
param eventsKey string

@description('Keys of kiln\'s HTTP API (KILN_API_KEYS, comma-separated; two during a rotation), each at least 16 characters. Stored in the Key Vault; the app reads them through a Key Vault reference.')
@secure()
param apiKeys string

@description('Optional outgoing webhook for kiln CloudEvents (KILN_WEBHOOK_URL / KILN_WEBHOOK_SECRET).')
param webhookUrl string = ''
@secure()
param webhookSecret string = ''

@description('Subscriptions searched for VMs using gallery images (comma-separated). Empty: all the app identity can read.')
param inventorySubscriptions string = ''

@description('Grant the app Storage Blob Data Reader on the subscription, so `kiln logs` reads build logs from the staging groups Image Builder creates. Off: that reads every blob in the subscription; prefer a stagingResourceGroup per pipeline.')
param grantStagingLogRead bool = false

@description('Builds active at once across all pipelines (KILN_MAX_ACTIVE_BUILDS).')
@minValue(1)
param maxActiveBuilds int = 4

@description('Most instances the app scales out to. Build state is in Table Storage, so any number share it; the cap bounds cost and the load on ARM.')
@minValue(1)
param maxInstances int = 5

// Unique per resource group: names that must not collide across deployments
// (in other groups or subscriptions of the same tenant) carry it.
var suffix = uniqueString(resourceGroup().id)
var storageName = toLower('${prefix}${suffix}')
var sbName = '${prefix}-sb-${suffix}'
var vaultName = take('${prefix}kv${suffix}', 24)
var contentShare = toLower('${prefix}-content')

// The queues' settings, shared with kiln's local host (src/host/catalog.rs
// embeds the same file): one source for maxDeliveryCount and the rest.
var queues = loadJsonContent('queues.json')

// ---------------------------------------------------------------- identities

// The identity AIB builds run as (named in every image template's `identity`).
resource aibIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${prefix}-aib'
  location: location
}

resource appUserIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (useUserAssignedIdentity) {
  name: '${prefix}-app'
  location: location
}

// ---------------------------------------------------------------- storage

// AzureWebJobsStorage: the Functions host's leases and timer state, and kiln's build state.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take(storageName, 24)
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

// The Premium plan's content share, created here: with its connection string
// behind a Key Vault reference the platform does not validate or create it
// (WEBSITE_SKIP_CONTENTSHARE_VALIDATION below).
resource files 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource contentFiles 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: files
  name: contentShare
}

// Every version's evidence (SBOM, findings, signed provenance), shared by
// all instances; the app's identity has Storage Blob Data Owner (below).
resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource evidenceContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'kiln-evidence'
  properties: {
    publicAccess: 'None'
  }
}

// ---------------------------------------------------------------- Service Bus

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: sbName
  location: location
  sku: { name: 'Standard', tier: 'Standard' } // Standard: scheduled messages and duplicate detection
  properties: {
    disableLocalAuth: true // Entra ID only: kiln and the host both use the managed identity
    minimumTlsVersion: '1.2'
  }
}

// Requests are deduplicated on MessageId (kiln sends its dedupe key there);
// a request that fails maxDeliveryCount times is dead-lettered for a person
// to read. lockDuration is as long as host.json's functionTimeout.
resource buildRequests 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: 'build-requests'
  properties: {
    maxDeliveryCount: queues['build-requests'].maxDeliveryCount
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: queues['build-requests'].duplicateDetectionHistoryTimeWindow
    deadLetteringOnMessageExpiration: true
    lockDuration: queues['build-requests'].lockDuration
  }
}

// Polls are scheduled messages (ScheduledEnqueueTimeUtc). A lost poll is
// found again by build_sweeper, so more redeliveries are cheap insurance.
resource buildPolls 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: 'build-polls'
  properties: {
    maxDeliveryCount: queues['build-polls'].maxDeliveryCount
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: queues['build-polls'].duplicateDetectionHistoryTimeWindow
    deadLetteringOnMessageExpiration: true
    lockDuration: queues['build-polls'].lockDuration
  }
}

// ---------------------------------------------------------------- Key Vault

// The app's secrets. App settings name them with Key Vault references, so
// the values are in neither the site's configuration nor its deployment
// history; the app identity reads them as Key Vault Secrets User.
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
  }
}

resource eventsKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'kiln-events-key'
  properties: { value: eventsKey }
}

resource apiKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'kiln-api-keys'
  properties: { value: apiKeys }
}

resource webhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookUrl)) {
  parent: vault
  name: 'kiln-webhook-secret'
  properties: { value: webhookSecret }
}

// Elastic Premium's content share takes a key-based connection string; the
// key stays in the vault too.
resource contentConnection 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'kiln-content-connection'
  properties: {
    value: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
  }
}

// ---------------------------------------------------------------- monitoring

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${prefix}-logs-${suffix}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

// kiln logs to stderr and the host forwards it, with every invocation's
// outcome, to Application Insights.
resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${prefix}-ai-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

// ---------------------------------------------------------------- gallery

resource gallery 'Microsoft.Compute/galleries@2023-07-03' = {
  name: galleryName
  location: location
  properties: {
    description: 'Golden images published by kiln'
  }
}

// ---------------------------------------------------------------- Function App

// Elastic Premium: Linux custom handlers, no cold-start timeouts on the
// Service Bus triggers, and room for the 5-minute functionTimeout in host.json.
resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: '${prefix}-plan'
  location: location
  kind: 'elastic'
  sku: { name: 'EP1', tier: 'ElasticPremium' }
  properties: {
    reserved: true // Linux
    // Build state is in Table Storage (KILN_STORE=table below): instances
    // share it, and one that is replaced or upgraded loses nothing.
    maximumElasticWorkerCount: maxInstances
  }
}

var identityClientSettings = useUserAssignedIdentity ? [
  { name: 'AZURE_CLIENT_ID', value: appUserIdentity!.properties.clientId }
  // Tell the host's identity-based connections which identity to use.
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: appUserIdentity!.properties.clientId }
  { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
  { name: 'ServiceBusConnection__clientId', value: appUserIdentity!.properties.clientId }
] : []

var webhookSettings = empty(webhookUrl) ? [] : [
  { name: 'KILN_WEBHOOK_URL', value: webhookUrl }
  { name: 'KILN_WEBHOOK_SECRET', value: '@Microsoft.KeyVault(SecretUri=${webhookSecretSecret!.properties.secretUri})' }
]

var inventorySettings = empty(inventorySubscriptions) ? [] : [
  { name: 'KILN_AZURE_INVENTORY_SUBSCRIPTIONS', value: inventorySubscriptions }
]

resource app 'Microsoft.Web/sites@2023-12-01' = {
  name: '${prefix}-func-${suffix}'
  location: location
  kind: 'functionapp,linux'
  identity: useUserAssignedIdentity ? {
    type: 'UserAssigned'
    userAssignedIdentities: { '${appUserIdentity!.id}': {} }
  } : {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references resolve as this identity.
    keyVaultReferenceIdentity: useUserAssignedIdentity ? appUserIdentity!.id : 'SystemAssigned'
    siteConfig: {
      linuxFxVersion: '' // custom handler: the host starts the `kiln serve` binary named in host.json
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      functionAppScaleLimit: maxInstances
      appSettings: concat([
        { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
        { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        // Elastic Premium's content share still takes a key-based connection
        // string: a Key Vault reference, so the platform skips validating the
        // share (created above).
        { name: 'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING', value: '@Microsoft.KeyVault(SecretUri=${contentConnection.properties.secretUri})' }
        { name: 'WEBSITE_SKIP_CONTENTSHARE_VALIDATION', value: '1' }
        { name: 'WEBSITE_CONTENTSHARE', value: contentShare }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        // Read by the Service Bus trigger bindings and by kiln's queue adapter alike.
        { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: '${serviceBus.name}.servicebus.windows.net' }
        { name: 'KILN_PROVIDER', value: 'azure' }
        { name: 'KILN_EVENTS_KEY', value: '@Microsoft.KeyVault(SecretUri=${eventsKeySecret.properties.secretUri})' }
        { name: 'KILN_API_KEYS', value: '@Microsoft.KeyVault(SecretUri=${apiKeysSecret.properties.secretUri})' }
        { name: 'KILN_MAX_ACTIVE_BUILDS', value: string(maxActiveBuilds) }
        // Build state: Table Storage on the app's storage account, reached
        // with the app's identity (Storage Table Data Contributor, below).
        // Never SQLite on /home: that is an SMB share, where SQLite's
        // locking does not hold, and several instances write at once.
        { name: 'KILN_STORE', value: 'table' }
        { name: 'KILN_TABLE_ENDPOINT', value: storage.properties.primaryEndpoints.table }
        // Evidence in Blob Storage, reached with the app's identity: the
        // data folder below is each instance's own.
        { name: 'KILN_EVIDENCE_ENDPOINT', value: storage.properties.primaryEndpoints.blob }
        { name: 'KILN_EVIDENCE_CONTAINER', value: evidenceContainer.name }
        // Scratch only (each instance's own events file and feed copy); nothing kiln must keep.
        { name: 'KILN_DATA_DIR', value: '/tmp/kiln' }
        { name: 'KILN_PIPELINES_DIR', value: 'pipelines' }
        // KILN_HANDLERS_DIR is not set: kiln reads the function folders from
        // the app root the host gives it (FUNCTIONS_APP_ROOT_PATH), where
        // `kiln package` puts them.
        { name: 'AZURE_SUBSCRIPTION_ID', value: subscription().subscriptionId }
        { name: 'KILN_AZURE_LOCATION', value: location }
        { name: 'KILN_AZURE_RESOURCE_GROUP', value: resourceGroup().name } // image templates live here
      ], identityClientSettings, webhookSettings, inventorySettings)
    }
  }
}

var appPrincipalId = useUserAssignedIdentity ? appUserIdentity!.properties.principalId : app.identity.principalId

// ---------------------------------------------------------------- roles

// Built-in role ids (stable across tenants).
var roles = {
  contributor: 'b24988ac-6180-42a0-ab88-20f7382dd24c'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// Custom role definitions are tenant-wide: the resource name is a GUID and
// the roleName must be unique in the tenant, so both derive from this
// resource group's id (a group of the same name in another subscription, or
// a second kiln, gets its own).

// The app creates, runs, cancels and deletes image templates in this group.
resource templateOperator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'kiln-image-template-operator')
  properties: {
    roleName: 'kiln image template operator (${resourceGroup().name}, ${suffix})'
    description: 'Manage and run Azure VM Image Builder templates.'
    type: 'CustomRole'
    assignableScopes: [ resourceGroup().id ]
    permissions: [
      {
        actions: [
          'Microsoft.VirtualMachineImages/imageTemplates/*'
          'Microsoft.VirtualMachineImages/locations/operations/read'
        ]
      }
    ]
  }
}

// What AIB's build identity needs to publish versions to kiln's gallery.
resource imageDistributor 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'kiln-image-distributor')
  properties: {
    roleName: 'kiln image distributor (${resourceGroup().name}, ${suffix})'
    description: 'Let Azure VM Image Builder write gallery image versions.'
    type: 'CustomRole'
    assignableScopes: [ resourceGroup().id ]
    permissions: [
      {
        actions: [
          'Microsoft.Compute/galleries/read'
          'Microsoft.Compute/galleries/images/read'
          'Microsoft.Compute/galleries/images/versions/read'
          'Microsoft.Compute/galleries/images/versions/write'
          'Microsoft.Compute/images/read'
          'Microsoft.Compute/images/write'
          'Microsoft.Compute/images/delete'
        ]
      }
    ]
  }
}

resource appTemplates 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, appPrincipalId, 'templates')
  properties: {
    roleDefinitionId: templateOperator.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Naming the AIB identity in a template is an assign action on that identity.
resource appAssignsAibIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(aibIdentity.id, appPrincipalId, roles.managedIdentityOperator)
  scope: aibIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource aibDistributes 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, aibIdentity.id, 'distributor')
  properties: {
    roleDefinitionId: imageDistributor.id
    principalId: aibIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Retention: list, deprecate (PATCH) and delete versions of kiln's gallery.
resource appGallery 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(gallery.id, appPrincipalId, roles.contributor)
  scope: gallery
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.contributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appSend 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, appPrincipalId, roles.serviceBusDataSender)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appReceive 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, appPrincipalId, roles.serviceBusDataReceiver)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Marketplace version lists (a floating `latest` PlatformImage source) are
// a subscription-scope read: without it every watch and build of such a
// pipeline fails 403. Build logs in Image Builder's staging groups are
// another, optional (grantStagingLogRead).
module subscriptionRoles 'modules/subscription-roles.bicep' = {
  name: 'kiln-subscription-roles-${suffix}'
  scope: subscription()
  params: {
    principalId: appPrincipalId
    deploymentSuffix: suffix
    grantStagingLogRead: grantStagingLogRead
  }
}

resource appStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in [ roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor ]: {
  name: guid(storage.id, appPrincipalId, r)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

// ---------------------------------------------------------------- parent gallery

// Reader on the parent gallery's group (AIB reads the source version; kiln
// lists the versions) and the Event Grid system topic there. Reader across the
// subscriptions whose VMs retention must see is infra/inventory-reader.bicep.
module parent 'modules/parent-gallery.bicep' = if (!empty(parentGalleryResourceGroup)) {
  name: 'kiln-parent-gallery-${suffix}'
  scope: resourceGroup(parentGalleryResourceGroup)
  params: {
    parentGalleryName: parentGalleryName
    readerPrincipalIds: [ appPrincipalId, aibIdentity.properties.principalId ]
    subscribe: subscribeToParentGallery
    functionResourceId: '${app.id}/functions/base_image_events'
    deploymentSuffix: suffix
    existingSystemTopicName: existingSystemTopicName
  }
}

output functionAppName string = app.name
output appPrincipalId string = appPrincipalId
output aibIdentityId string = aibIdentity.id
output galleryId string = gallery.id
output serviceBusNamespace string = '${serviceBus.name}.servicebus.windows.net'
output serviceBusId string = serviceBus.id
output keyVaultName string = vault.name
