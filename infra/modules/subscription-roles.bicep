// Deployed at subscription scope (main.bicep calls it with
// `scope: subscription()`): what kiln needs there and no resource-group role
// gives it.
//
// Marketplace image versions are listed under
//   /subscriptions/{s}/providers/Microsoft.Compute/locations/{region}/publishers/…/versions
// which is a subscription-level path: an assignment on a resource group does
// not cover it, and a pipeline with a floating `latest` PlatformImage source
// fails 403 on every watch and build without it.

targetScope = 'subscription'

@description('The kiln app identity (principal id).')
param principalId string

@description('main.bicep\'s uniqueString of its resource group: keeps the role assignment apart from another kiln\'s.')
param deploymentSuffix string

@description('Also grant Storage Blob Data Reader on the subscription (build logs from the staging groups Image Builder creates per template).')
param grantStagingLogRead bool = false

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

// One definition per subscription (the GUID is derived from it); a second
// kiln in the same subscription deploys the same definition, unchanged.
resource marketplaceReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'kiln-marketplace-reader')
  properties: {
    roleName: 'kiln marketplace reader (${subscription().subscriptionId})'
    description: 'List marketplace VM image versions (kiln watches them for base-image updates).'
    type: 'CustomRole'
    assignableScopes: [ subscription().id ]
    permissions: [
      {
        actions: [
          'Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read'
        ]
      }
    ]
  }
}

resource appReadsMarketplace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, marketplaceReader.id, deploymentSuffix)
  properties: {
    roleDefinitionId: marketplaceReader.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Image Builder writes each run's customization.log to a storage account in
// a staging group it creates per template, named at run time, anywhere in
// the subscription: only a subscription-scope grant reaches it. kiln must
// find the account (`Microsoft.Storage/storageAccounts/read`, which Storage
// Blob Data Reader does not include) and read the blob. That is a read of
// every blob in the subscription, so it is off unless asked for; without
// it kiln keeps no build logs in Azure (`kiln preflight` says so). A fixed
// `stagingResourceGroup` is not the narrower way: kiln refuses one, since
// concurrent builds and attempts would share it and AIB would fail them.
resource stagingLogLocator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (grantStagingLogRead) {
  name: guid(subscription().id, 'kiln-staging-log-locator')
  properties: {
    roleName: 'kiln staging log locator (${subscription().subscriptionId})'
    description: 'Find the storage account of an Image Builder staging group (kiln copies customization.log before the template goes).'
    type: 'CustomRole'
    assignableScopes: [ subscription().id ]
    permissions: [
      {
        actions: [
          'Microsoft.Storage/storageAccounts/read'
        ]
      }
    ]
  }
}

resource appLocatesStagingLogs 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantStagingLogRead) {
  name: guid(subscription().id, principalId, 'kiln-staging-log-locator', deploymentSuffix)
  properties: {
    roleDefinitionId: stagingLogLocator.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource appReadsStagingLogs 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantStagingLogRead) {
  name: guid(subscription().id, principalId, storageBlobDataReader, deploymentSuffix)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
